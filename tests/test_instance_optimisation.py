import pytest
import torch
from monai.networks.blocks import Warp

from monai_moe_reg.data import synthetic_pair
from monai_moe_reg.engines.instance_optimisation import optimise_field
from monai_moe_reg.metrics import dice_per_label, sd_log_jacobian


def _pair(shape=(24, 24, 24), seed=3):
    p = synthetic_pair(shape, max_disp=3.0, seed=seed)
    return {k: v[None].float() for k, v in p.items()}


def test_field_optimisation_from_identity_recovers_a_smooth_deformation():
    p = _pair()
    start = torch.zeros(1, 3, 24, 24, 24)
    ddf = optimise_field(start, p["moving_image"], p["fixed_image"], torch.nn.MSELoss(), steps=150, lr=0.1,
                         lambda_reg=0.1, progress=False)
    assert ddf.shape == start.shape and not ddf.requires_grad
    assert torch.count_nonzero(start) == 0  # the initial field is not modified in place
    warped = Warp(mode="nearest", padding_mode="zeros")(p["moving_label"], ddf)
    labels = list(range(1, int(p["fixed_label"].max()) + 1))
    before = dice_per_label(p["moving_label"].long(), p["fixed_label"].long(), labels).nanmean()
    after = dice_per_label(warped.long(), p["fixed_label"].long(), labels).nanmean()
    assert after > before + 0.1, (float(before), float(after))
    assert float(sd_log_jacobian(ddf).max()) < 0.5


def test_field_optimisation_keeps_a_perfect_start_within_half_a_voxel():
    # Adam turns rounding-noise gradients into lr-sized steps; the box filter keeps the drift small
    p = _pair()
    ddf = optimise_field(torch.zeros(1, 3, 24, 24, 24), p["fixed_image"], p["fixed_image"], torch.nn.MSELoss(),
                         steps=20, lr=0.1, progress=False)
    assert float(ddf.abs().max()) < 0.5 and float(ddf.abs().mean()) < 0.1


@pytest.mark.parametrize(
    "ddf,moving,kwargs,match",
    [
        (torch.zeros(1, 3, 20, 24, 24), torch.zeros(1, 1, 24, 24, 24), {}, "one pair on one grid"),
        (torch.zeros(2, 3, 24, 24, 24), torch.zeros(1, 1, 24, 24, 24), {}, "one pair on one grid"),
        (torch.zeros(1, 3, 24, 24, 24), torch.zeros(1, 1, 24, 24, 20), {}, "one pair on one grid"),
        (torch.zeros(1, 3, 24, 24, 24), torch.zeros(1, 1, 24, 24, 24), {"coarsen": 0}, "coarsen"),
        (torch.zeros(1, 3, 24, 24, 24), torch.zeros(1, 1, 24, 24, 24), {"lr": 0.0}, "lr > 0"),
        (torch.zeros(1, 3, 24, 24, 24), torch.zeros(1, 1, 24, 24, 24), {"lambda_reg": -0.1}, "lambda_reg >= 0"),
    ],
)
def test_field_optimisation_rejects_bad_inputs(ddf, moving, kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimise_field(ddf, moving, torch.zeros(1, 1, 24, 24, 24), torch.nn.MSELoss(), steps=1, progress=False, **kwargs)
