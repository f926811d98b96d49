import pytest
import torch

from monai_moe_reg.networks.blocks import SHMoE


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_and_records(spatial_dims):
    layer = SHMoE(spatial_dims, in_channels=6, kernel_sizes=(1, 3, 5))
    x = torch.randn(2, 6, *([7] * spatial_dims))
    out = layer(x)
    assert out.shape == (2, spatial_dims, *([7] * spatial_dims))
    assert layer.last_gates.shape == (2, spatial_dims, 3, *([7] * spatial_dims))
    assert torch.allclose(layer.last_gates.sum(2), torch.ones(1))
    assert layer.last_expert_outputs.shape == layer.last_gates.shape
    assert layer.last_selection.shape == out.shape


def test_output_is_the_selected_expert_per_voxel_and_direction():
    layer = SHMoE(3, in_channels=4, kernel_sizes=(1, 3, 5), init_std=0.1)
    with torch.no_grad():  # direction d prefers expert d: routing differs between directions
        layer.router.weight.zero_()
        bias = torch.full((3, 3), -5.0)
        bias[torch.arange(3), torch.arange(3)] = 5.0
        layer.router.bias.copy_(bias.flatten())
    out = layer(torch.randn(1, 4, 6, 6, 6))
    assert torch.equal(layer.last_selection[0, 0], torch.zeros(6, 6, 6, dtype=torch.long))
    assert torch.equal(layer.last_selection[0, 2], torch.full((6, 6, 6), 2, dtype=torch.long))
    experts = layer.last_expert_outputs
    for d in range(3):
        assert torch.allclose(out[:, d], experts[:, d, d])  # straight-through: exactly the expert's value


def test_random_router_picks_different_experts_across_directions():
    layer = SHMoE(3, in_channels=8)
    layer(torch.randn(1, 8, 8, 8, 8))
    sel = layer.last_selection[0]
    assert (sel[0] != sel[1]).any() and (sel[1] != sel[2]).any()
    assert len(torch.unique(sel)) == 3


@pytest.mark.parametrize("gate_mode", ["straight_through", "switch"])
def test_gradients_reach_every_expert_and_the_router(gate_mode):
    layer = SHMoE(3, in_channels=8, gate_mode=gate_mode, init_std=0.1)
    out = layer(torch.randn(2, 8, 8, 8, 8))
    out.pow(2).sum().backward()
    for i, expert in enumerate(layer.experts):
        assert expert.weight.grad.abs().sum() > 0, f"expert {i} got no gradient"
    assert layer.router.weight.grad.abs().sum() > 0


def test_switch_mode_scales_by_gate():
    layer = SHMoE(2, in_channels=3, gate_mode="switch", init_std=0.1)
    out = layer(torch.randn(1, 3, 5, 5))
    sel = layer.last_expert_outputs.gather(2, layer.last_selection.unsqueeze(2)).squeeze(2)
    assert torch.allclose(out, sel * layer.last_gates.max(2).values)


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
