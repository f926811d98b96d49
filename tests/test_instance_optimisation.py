"""The one instance optimiser (``apps.deformable.optimise_pyramid``) on one voxel grid, as ``bench/accuracy.py``
uses it after a network: from the identity it recovers a smooth deformation, a perfect start stays put, and bad
settings are refused."""

import pytest
import torch
from monai.networks.blocks import Warp

from monai_moe_reg.apps.deformable import compose, optimise_pyramid
from monai_moe_reg.apps.spatial import Grid, resample_field
from monai_moe_reg.data import synthetic_pair
from monai_moe_reg.metrics import dice_per_label, sd_log_jacobian

GRID = Grid((24, 24, 24), torch.eye(4, dtype=torch.float64))


def _pair(shape=(24, 24, 24), seed=3):
    p = synthetic_pair(shape, max_disp=3.0, seed=seed)
    return {k: v[None].float() for k, v in p.items()}


def _refine(moving, fixed, initial=None, **kwargs):
    kwargs = {"levels": (2, 1), "steps": 100, "lr": 0.1, "lambda_reg": 0.1, **kwargs}
    eye = torch.eye(4, dtype=torch.float64)
    w, grid, _ = optimise_pyramid(fixed, GRID, moving, GRID, eye, torch.nn.MSELoss(), initial=initial, **kwargs)
    u0 = resample_field(initial[0], initial[1], GRID) if initial is not None else None
    return compose(resample_field(w, grid, GRID), u0)


def test_pyramid_optimisation_from_identity_recovers_a_smooth_deformation():
    p = _pair()
    ddf = _refine(p["moving_image"], p["fixed_image"])
    assert ddf.shape == (1, 3, 24, 24, 24) and not ddf.requires_grad
    warped = Warp(mode="nearest", padding_mode="zeros")(p["moving_label"], ddf)
    labels = list(range(1, int(p["fixed_label"].max()) + 1))
    before = dice_per_label(p["moving_label"].long(), p["fixed_label"].long(), labels).nanmean()
    after = dice_per_label(warped.long(), p["fixed_label"].long(), labels).nanmean()
    assert after > before + 0.1, (float(before), float(after))
    assert float(sd_log_jacobian(ddf).max()) < 0.5


def test_pyramid_optimisation_refines_an_initial_field_without_changing_it():
    p = _pair()
    start = torch.zeros(1, 3, 24, 24, 24)
    ddf = _refine(p["moving_image"], p["fixed_image"], initial=(start, GRID), steps=20)
    assert torch.count_nonzero(start) == 0 and ddf.shape == start.shape  # the initial field is not modified


def test_pyramid_optimisation_keeps_a_perfect_start_within_half_a_voxel():
    # Adam turns rounding-noise gradients into lr-sized steps; the box filter keeps the drift small
    p = _pair()
    ddf = _refine(p["fixed_image"], p["fixed_image"], steps=20, lambda_reg=0.01)
    assert float(ddf.abs().max()) < 0.5 and float(ddf.abs().mean()) < 0.1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": [10, 10, 10]}, "2 levels but 3 step counts"),
        ({"lr": 0.0}, "lr > 0"),
        ({"lambda_reg": -0.1}, "lambda_reg >= 0"),
        ({"lambda_reg": [0.1, 0.2, 0.3]}, "one per level"),
        ({"regularise": "everything"}, "regularise must be one of"),
        ({"levels": ()}, "at least one level"),
    ],
)
def test_pyramid_optimisation_rejects_bad_settings(kwargs, match):
    p = _pair()
    with pytest.raises(ValueError, match=match):
        _refine(p["moving_image"], p["fixed_image"], **{"steps": 1, **kwargs})
