import pytest
import torch

from monai_moe_reg.networks.blocks import SHMoE


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_and_records(spatial_dims):
    layer = SHMoE(spatial_dims, in_channels=6, kernel_sizes=(1, 3, 5))
    x = torch.randn(2, 6, *([7] * spatial_dims))
    out, aux = layer(x, return_aux=True)
    assert out.shape == (2, spatial_dims, *([7] * spatial_dims))
    assert aux["gates"].shape == (2, spatial_dims, 3, *([7] * spatial_dims))
    assert torch.allclose(aux["gates"].sum(2), torch.ones(1))
    assert aux["experts"].shape == aux["gates"].shape
    assert aux["selection"].shape == out.shape
    assert torch.equal(layer(x), out) and not [k for k in vars(layer) if k.startswith("last_")]


def test_output_is_the_selected_expert_per_voxel_and_direction():
    layer = SHMoE(3, in_channels=4, kernel_sizes=(1, 3, 5), init_std=0.1)
    with torch.no_grad():  # direction d prefers expert d: routing differs between directions
        layer.router.weight.zero_()
        bias = torch.full((3, 3), -5.0)
        bias[torch.arange(3), torch.arange(3)] = 5.0
        layer.router.bias.copy_(bias.flatten())
    out, aux = layer(torch.randn(1, 4, 6, 6, 6), return_aux=True)
    assert torch.equal(aux["selection"][0, 0], torch.zeros(6, 6, 6, dtype=torch.long))
    assert torch.equal(aux["selection"][0, 2], torch.full((6, 6, 6), 2, dtype=torch.long))
    experts = aux["experts"]
    for d in range(3):
        assert torch.allclose(out[:, d], experts[:, d, d])  # straight-through: exactly the expert's value


def test_random_router_picks_different_experts_across_directions():
    layer = SHMoE(3, in_channels=8)
    sel = layer(torch.randn(1, 8, 8, 8, 8), return_aux=True)[1]["selection"][0]
    assert (sel[0] != sel[1]).any() and (sel[1] != sel[2]).any()
    assert len(torch.unique(sel)) == 3


@pytest.mark.parametrize("gate_mode", ["straight_through", "switch", "mixture"])
def test_gradients_reach_every_expert_and_the_router(gate_mode):
    layer = SHMoE(3, in_channels=8, gate_mode=gate_mode, init_std=0.1)
    out = layer(torch.randn(2, 8, 8, 8, 8))
    out.pow(2).sum().backward()
    for i, expert in enumerate(layer.experts):
        assert expert.weight.grad.abs().sum() > 0, f"expert {i} got no gradient"
    assert layer.router.weight.grad.abs().sum() > 0


def test_switch_mode_scales_by_gate():
    layer = SHMoE(2, in_channels=3, gate_mode="switch", init_std=0.1)
    out, aux = layer(torch.randn(1, 3, 5, 5), return_aux=True)
    sel = aux["experts"].gather(2, aux["selection"].unsqueeze(2)).squeeze(2)
    assert torch.allclose(out, sel * aux["gates"].max(2).values)


def test_mixture_mode_selects_hard_but_gives_the_router_every_experts_prediction():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6, 6)
    layers = {m: SHMoE(3, in_channels=4, gate_mode=m, init_std=0.1) for m in ("straight_through", "mixture")}
    layers["mixture"].load_state_dict(layers["straight_through"].state_dict())
    outs, grads = {}, {}
    for mode, layer in layers.items():
        out, aux = layer(x, return_aux=True)
        torch.manual_seed(1)
        (out - torch.randn_like(out)).pow(2).sum().backward()
        outs[mode], grads[mode] = out.detach(), layer.router.weight.grad.clone()
        if mode == "mixture":  # router gradient = that of sum_e p_e * expert_e with the experts held fixed
            probe = SHMoE(3, in_channels=4, gate_mode="mixture", init_std=0.1)
            probe.load_state_dict(layer.state_dict())
            o, a = probe(x, return_aux=True)
            mixture = (a["gates"] * a["experts"].detach()).sum(2)
            torch.manual_seed(1)
            residual = 2 * (o.detach() - torch.randn_like(o))
            (residual * mixture).sum().backward()
            assert torch.allclose(grads[mode], probe.router.weight.grad, atol=1e-5)
    assert torch.equal(outs["mixture"], outs["straight_through"])  # same forward value: the selected expert
    assert not torch.allclose(grads["mixture"], grads["straight_through"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_sizes=(1, 2)), "odd"),
        (dict(kernel_sizes=()), "non-empty"),
        (dict(gate_mode="soft"), "gate_mode"),
        (dict(spatial_dims=4), "spatial_dims"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(spatial_dims=3, in_channels=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SHMoE(**args)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_one_fused_convolution_equals_the_experts_run_one_by_one(spatial_dims):
    layer = SHMoE(spatial_dims, in_channels=5, kernel_sizes=(1, 3, 5), init_std=0.1)
    x = torch.randn(2, 5, *([9] * spatial_dims), requires_grad=True)
    fused = layer.expert_outputs(x)
    separate = torch.stack([expert(x) for expert in layer.experts], dim=2)
    assert torch.allclose(fused, separate, atol=1e-5)
    grads = torch.autograd.grad(fused.pow(2).sum(), [e.weight for e in layer.experts])
    ref = torch.autograd.grad(separate.pow(2).sum(), [e.weight for e in layer.experts])
    assert all(g.shape == r.shape and torch.allclose(g, r, atol=1e-4) for g, r in zip(grads, ref))


def test_conv_of_concatenated_parts_equals_the_block_on_the_concatenation():
    from monai.networks.blocks import Convolution

    from monai_moe_reg.networks.blocks.pyramid_decoder import conv_concatenated

    block = Convolution(3, 12, 5, act=("leakyrelu", {"negative_slope": 0.2}), norm=None)
    parts = [torch.randn(2, c, 7, 6, 5, requires_grad=True) for c in (4, 5, 3)]
    ref, out = block(torch.cat(parts, 1)), conv_concatenated(block, parts)
    assert torch.allclose(ref, out, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), [block.conv.weight, *parts])
    ref_grads = torch.autograd.grad(ref.sum(), [block.conv.weight, *parts])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, ref_grads))
