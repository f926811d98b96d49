import torch
from monai.networks.blocks import Warp

from monai_moe_reg.data import random_smooth_ddf
from monai_moe_reg.metrics import nonpositive_jacobian_percent
from monai_moe_reg.networks.blocks import ResidualFlowComposer, upsample_ddf


def test_upsample_scales_vectors():
    ddf = torch.ones(1, 3, 4, 5, 6)
    up = upsample_ddf(ddf)
    assert up.shape == (1, 3, 8, 10, 12)
    assert torch.allclose(up, torch.full_like(up, 2.0))
    up = upsample_ddf(ddf, (8, 15, 6))
    assert torch.allclose(up[:, 1], torch.full_like(up[:, 1], 3.0)) and torch.allclose(up[:, 2], torch.ones(1))


def test_composition_of_translations_adds():
    comp = ResidualFlowComposer(3)
    a = torch.zeros(1, 3, 8, 8, 8)
    a[:, 0] = 1.0
    b = torch.zeros(1, 3, 8, 8, 8)
    b[:, 1] = -2.0
    out = comp(a, b)
    assert torch.allclose(out[:, 0], torch.ones(1)) and torch.allclose(out[:, 1], torch.full((1,), -2.0))
    assert torch.equal(comp(None, b), b)


def test_composition_matches_sequential_warping():
    comp = ResidualFlowComposer(3)
    u = random_smooth_ddf((16, 16, 16), 2.0, seed=1)[None]
    w = random_smooth_ddf((16, 16, 16), 2.0, seed=2)[None]
    img = torch.rand(1, 1, 16, 16, 16)
    img = torch.nn.functional.avg_pool3d(img, 5, 1, 2)  # smooth so interpolation errors are small
    warp = Warp(padding_mode="border")
    sequential = warp(warp(img, u), w)  # moving warped by u, then the result warped by w
    composed = warp(img, comp(u, w))
    inner = (slice(None), slice(None)) + (slice(4, 12),) * 3
    assert (sequential - composed)[inner].abs().max() < 0.02


def test_diffeomorphic_integration_removes_folding():
    v = random_smooth_ddf((32, 32, 32), max_disp=6.0, control=5, seed=3)[None]
    assert nonpositive_jacobian_percent(v).item() > 0.05  # used directly as a displacement it folds
    comp = ResidualFlowComposer(3, diffeomorphic=True)
    ddf = comp(comp(None, v), v)  # two integrated levels composed
    assert nonpositive_jacobian_percent(ddf).item() == 0.0
