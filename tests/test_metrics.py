import math

import pytest
import torch

from monai_moe_reg.metrics import (
    assd_mm,
    dice_per_label,
    hd95_mm,
    jacobian_determinant,
    nonpositive_jacobian_percent,
    sd_log_jacobian,
)


def _cubes():
    a = torch.zeros(1, 1, 20, 20, 20, dtype=torch.long)
    a[:, :, 5:10, 5:10, 5:10] = 1
    a[:, :, 12:16, 12:16, 12:16] = 2
    b = torch.zeros_like(a)
    b[:, :, 7:12, 5:10, 5:10] = 1  # label 1 shifted by 2 voxels along axis 0
    b[:, :, 12:16, 12:16, 12:16] = 2  # label 2 identical
    return b, a


def test_dice_per_label_hand_computed():
    pred, target = _cubes()
    dice = dice_per_label(pred, target)
    # label 1: overlap 3*5*5 = 75 of 125 + 125 -> 150 / 250
    assert torch.allclose(dice, torch.tensor([[0.6, 1.0]]))
    dice = dice_per_label(pred, target, labels=[2, 7])
    assert dice[0, 0] == 1.0 and math.isnan(dice[0, 1].item())


def test_surface_distances_in_mm_between_parallel_planes():
    pred = torch.zeros(1, 1, 12, 6, 6, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[:, :, 5] = 1
    target[:, :, 8] = 1  # 3 voxels apart along axis 0
    assert torch.allclose(hd95_mm(pred, target, spacing=(2.0, 1.0, 1.0)).float(), torch.tensor([[6.0]]))
    assert torch.allclose(assd_mm(pred, target, spacing=(2.0, 1.0, 1.0)).float(), torch.tensor([[6.0]]))
    assert torch.allclose(hd95_mm(pred, target).float(), torch.tensor([[3.0]]))  # voxels = mm at 1 mm


def test_shifted_cube_hd95_scales_with_spacing():
    pred, target = _cubes()
    assert hd95_mm(pred, target, [1], spacing=(2.0, 1.0, 1.0)).item() == pytest.approx(4.0)
    assert hd95_mm(pred, target, [1], spacing=(1.0, 3.0, 3.0)).item() == pytest.approx(2.0)
    assert assd_mm(pred, target, [2]).item() == 0.0


def test_label_errors():
    with pytest.raises(ValueError, match="same shape"):
        dice_per_label(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="empty"):
        dice_per_label(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        hd95_mm(*_cubes(), spacing=(1.0, 1.0))


def test_jacobian_of_linear_fields():
    ddf = torch.zeros(1, 3, 8, 8, 8)
    ddf[:, 0] = 0.5 * torch.arange(8.0).view(8, 1, 1)  # stretch 1.5 along axis 0
    ddf[:, 1] = -0.5 * torch.arange(8.0).view(1, 8, 1)  # compress 0.5 along axis 1
    det = jacobian_determinant(ddf)
    assert det.shape == (1, 8, 8, 8)
    assert torch.allclose(det, torch.full_like(det, 0.75))
    assert torch.allclose(jacobian_determinant(ddf, spacing=(3.0, 1.0, 2.0)), det)  # spacing-invariant
    assert nonpositive_jacobian_percent(ddf).item() == 0.0
    assert sd_log_jacobian(ddf).item() == pytest.approx(0.0, abs=1e-6)


def test_folding_percentage_and_sdlogj():
    ddf = torch.zeros(1, 2, 10, 10)
    ddf[:, 0, :5] = -2.0 * torch.arange(5.0).view(5, 1)  # d u0 / d x0 = -2 in rows 0..4 -> det = -1
    pct = nonpositive_jacobian_percent(ddf)
    # d u0/d x0: rows 0..3 -> -2 (det -1); row 4 central (0 - -6)/2 = 3 (det 4); row 5 (0 - -8)/2 = 4 (det 5);
    # rows 6..9 -> 0 (det 1). So 4 of 10 rows fold.
    assert pct.item() == pytest.approx(40.0)
    assert sd_log_jacobian(ddf).item() > 1.0
    with pytest.raises(ValueError, match="DDF"):
        jacobian_determinant(torch.zeros(1, 3, 4, 4))


def test_counted_dice_and_boxed_surface_distances_match_monai_on_many_labels():
    """The histogram Dice and the bounding-box surface distances equal MONAI's whole-volume computations (labels
    absent from one map or from both included)."""
    from monai.metrics import compute_dice

    from monai_moe_reg.metrics.overlap import label_channels, surface_distances_mm

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 9, (2, 1, 6, 6, 6), generator=g).repeat_interleave(3, 2).repeat_interleave(3, 3)
    target = target.repeat_interleave(3, 4)
    pred = torch.roll(target, 2, dims=2)
    pred[pred == 5] = 0  # label 5 absent from pred
    labels = [1, 2, 3, 4, 5, 6, 7, 8, 40]  # 40 absent from both
    p, t, _ = label_channels(pred, target, labels)
    expected = compute_dice(p, t, include_background=True, ignore_empty=True)
    assert torch.allclose(dice_per_label(pred, target, labels), expected, equal_nan=True)
    hd, assd = surface_distances_mm(pred, target, labels, spacing=(1.0, 2.0, 1.5))
    ref_hd, ref_assd = hd95_mm(pred, target, labels, (1.0, 2.0, 1.5)), assd_mm(pred, target, labels, (1.0, 2.0, 1.5))
    finite = torch.isfinite(ref_hd)
    assert torch.allclose(hd[finite], ref_hd.double()[finite])
    assert torch.allclose(assd[finite], ref_assd.double()[finite])
    assert torch.isinf(hd[:, 4]).all() and torch.isnan(hd[:, 8]).all()
