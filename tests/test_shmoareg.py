import pytest
import torch
from monai.networks.blocks import Warp

from monai_moe_reg.data import synthetic_pair
from monai_moe_reg.losses import SHMoARegLoss
from monai_moe_reg.metrics import dice_per_label
from monai_moe_reg.networks.blocks import MoAWindowAttention
from monai_moe_reg.networks.nets import SHMoAReg

from .conftest import tiny_shmoareg_kwargs


def test_paper_defaults_build_and_run():
    net = SHMoAReg()
    assert net.stride == 32 and net.window_size == (4, 4, 4)
    assert net.encoder.out_channels == [16, 24, 48, 96, 192, 384]
    moa = [m for m in net.modules() if isinstance(m, MoAWindowAttention)]
    assert len(moa) == 2 + 2 + 4 + 2 and all(m.num_experts == 8 and m.top_k == 4 for m in moa)
    assert [lv for lv in net.decoder.moe_levels] == [0, 1]
    with torch.no_grad():
        ddf = net(torch.rand(1, 2, 32, 32, 32))
    assert ddf.shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize(
    "spatial_dims, size",
    [(3, (16, 16, 16)), (3, (19, 24, 13)), (2, (32, 32)), (2, (21, 30))],
)
def test_forward_shapes_and_routing(spatial_dims, size):
    net = SHMoAReg(spatial_dims=spatial_dims, **tiny_shmoareg_kwargs())
    ddf = net(torch.rand(2, 2, *size))
    assert ddf.shape == (2, spatial_dims, *size)
    assert len(net.routing) == 2
    full, half = net.routing
    assert full.shape == (2, spatial_dims, 3, *size)
    assert half.shape == (2, spatial_dims, 3, *[(s + 1) // 2 for s in size])
    assert torch.allclose(full.sum(2), torch.ones(1))
    assert net.expert_maps[0].shape == (2, spatial_dims, *size)


def test_gradients_reach_every_expert_and_router():
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    for layer in net.decoder.moe_layers():  # non-negligible experts so every path carries a signal
        for expert in layer.experts:
            torch.nn.init.normal_(expert.weight, 0, 0.05)
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    ddf, aux = net(torch.cat([moving, fixed], 1), return_aux=True)
    SHMoARegLoss()(moving, fixed, ddf, aux)["loss"].backward()
    for layer in net.decoder.moe_layers():
        assert layer.router.weight.grad.abs().sum() > 0
        for k, expert in zip(layer.kernel_sizes, layer.experts):
            assert expert.weight.grad.abs().sum() > 0, f"SHMoE expert k={k} got no gradient"
    for m in net.modules():
        if isinstance(m, MoAWindowAttention):
            assert m.router.weight.grad.abs().sum() > 0
            assert m.q_proj.weight.grad.abs().sum() > 0


def test_ablation_flags():
    plain = SHMoAReg(use_moa=False, use_shmoe=False, **tiny_shmoareg_kwargs())
    assert not any(isinstance(m, MoAWindowAttention) for m in plain.modules())
    ddf, aux = plain(torch.rand(1, 2, 16, 16, 16), return_aux=True)
    assert ddf.shape == (1, 3, 16, 16, 16)
    assert plain.routing == [] and aux["routing"] == [] and aux["moa_balance"] == 0
    moe_only = SHMoAReg(use_moa=False, **tiny_shmoareg_kwargs())
    moe_only(torch.rand(1, 2, 16, 16, 16))
    assert len(moe_only.routing) == 2


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(1, 3, 16, 16, 16), "2 channels"),
        (torch.rand(1, 1, 16, 16, 16), "2 channels"),
        (torch.rand(1, 2, 16, 16), "3 spatial dims"),
        (torch.rand(2, 16, 16, 16), "3 spatial dims"),
        (torch.full((1, 2, 16, 16, 16), float("nan")), "NaN"),
        (torch.full((1, 2, 16, 16, 16), float("inf")), "Inf"),
        (torch.zeros(1, 2, 16, 16, 16, dtype=torch.long), "floating-point"),
        ([torch.rand(1, 1, 16, 16, 16)] * 2, "torch.Tensor"),
        (torch.rand(0, 2, 16, 16, 16), "empty input"),
        (torch.rand(1, 2, 16, 0, 16), "empty input"),
    ],
)
def test_bad_inputs(x, match):
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    with pytest.raises(ValueError, match=match):
        net(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_and_tiny_images_run_at_the_weights_dtype(dtype):
    net = SHMoAReg(**tiny_shmoareg_kwargs()).eval()
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad():
        ref, out = net(x), net(x.to(dtype))
        tiny = net(torch.rand(1, 2, 1, 1, 1))
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-2)
    assert tiny.shape == (1, 3, 1, 1, 1) and torch.isfinite(tiny).all()


def test_non_finite_output_is_an_error_unless_values_are_unchecked():
    net = SHMoAReg(**tiny_shmoareg_kwargs()).eval()
    with torch.no_grad():
        for p in net.decoder.parameters():
            p.fill_(1e30)
        with pytest.raises(ValueError, match="non-finite displacement field .* scale the images"):
            net(torch.rand(1, 2, 16, 16, 16))
        net.check_values = False
        assert not torch.isfinite(net(torch.full((1, 2, 16, 16, 16), float("nan")))).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        SHMoAReg(spatial_dims=1)
    with pytest.raises(ValueError, match="decoder_channels"):
        SHMoAReg(**tiny_shmoareg_kwargs(decoder_channels=(8, 8)))
    with pytest.raises(ValueError, match="moe_levels"):
        SHMoAReg(**tiny_shmoareg_kwargs(moe_levels=(0, 7)))


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_overfits_a_synthetic_pair(diffeomorphic):
    """A tiny net registers a pair with a known smooth deformation: the warped-image error falls by more than half."""
    pair = synthetic_pair((32, 32, 32), max_disp=3.0, seed=1)
    moving, fixed = pair["moving_image"][None], pair["fixed_image"][None]
    net = SHMoAReg(diffeomorphic=diffeomorphic, **tiny_shmoareg_kwargs())
    loss_fn = SHMoARegLoss(lambda_reg=0.01)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    warp = Warp()
    before = ((moving - fixed) ** 2).mean().item()
    for _ in range(40):
        ddf, aux = net(torch.cat([moving, fixed], 1), return_aux=True)
        loss = loss_fn(moving, fixed, ddf, aux)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ddf = net(torch.cat([moving, fixed], 1))
    after = ((warp(moving, ddf) - fixed) ** 2).mean().item()
    assert after < 0.5 * before, (before, after)
    warped_label = Warp(mode="nearest", padding_mode="zeros")(pair["moving_label"][None].float(), ddf)
    dice_before = dice_per_label(pair["moving_label"][None], pair["fixed_label"][None]).nanmean()
    dice_after = dice_per_label(warped_label.long(), pair["fixed_label"][None]).nanmean()
    assert dice_after > dice_before


def test_routing_is_empty_before_the_first_forward():
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    assert net.routing == [] and net.expert_maps == [] and hasattr(net, "expert_maps")


def test_torchscript_form_equals_eager_at_its_grid_and_takes_any_size():
    """torch.jit.script (MONAI ckpt_export) traces at img_size and resamples other sizes: at the grid it replays
    the eager network exactly on inputs other than the traced one (MoA and SHMoE routing included)."""
    net = SHMoAReg(**tiny_shmoareg_kwargs(flow_init_std=0.05)).train()
    scripted = torch.jit.script(net)
    assert net.training, "the network's mode is restored"
    net.eval()
    for scale in (1.0, 3.0):
        x = torch.rand(1, 2, 32, 32, 32) * scale
        with torch.no_grad():
            assert torch.allclose(scripted(x), net(x), atol=1e-5)
    x = torch.rand(1, 2, 48, 40, 24)
    with torch.no_grad():
        out = scripted(x)
    assert out.shape == (1, 3, 48, 40, 24)
    # a uniform shift of 1 grid voxel along axis 0 becomes (48 - 1) / (32 - 1) input voxels
    shift = torch.zeros(1, 3, 32, 32, 32)
    shift[:, 0] = 1.0
    from monai_moe_reg.networks.export import FixedGridExport

    const = FixedGridExport(torch.jit.trace(lambda t: shift.expand(t.shape[0], -1, -1, -1, -1), x[..., :32, :32, :32]), (32, 32, 32))
    assert torch.allclose(const(x)[:, 0], torch.full((1, 48, 40, 24), 47 / 31))


def test_torch_compile_breaks_no_graph_in_our_code():
    """The value checks (a host sync) are skipped while torch.compile traces; what still breaks the graph is
    MONAI's Warp (its meshgrid and requires_grad handling), not this package."""
    net = SHMoAReg(**tiny_shmoareg_kwargs()).eval()
    explained = torch._dynamo.explain(net)(torch.rand(1, 2, 32, 32, 32))
    ours = [b for b in explained.break_reasons if b.user_stack and "monai_moe_reg" in b.user_stack[-1].filename]
    assert not ours, [str(b.reason).splitlines()[0] for b in ours]
