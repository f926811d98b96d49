"""One scorer for every method of the registration benches (ours in or out of process, ANTs): the warped moving
label and the displacement field on the fixed grid in, Dice / %|J|<=0 / SD log J out.

- The fixed label is read through its own header and resampled (nearest) onto the fixed image's grid.
- FreeSurfer's ``aparc(.a2009s)+aseg`` cortex parcels (1000-2999, 11100-12999) count as the aseg cortex labels 3
  (left) and 42 (right), so a parcellated brain is scored on the same 30 labels as an aseg one.
- Dice: per label, mean over the scored ids present in the fixed map (``labels``: the 30 ids of
  ``brain/eval_labels.json`` for FreeSurfer brains; every id of the fixed map for DLMUSE).
- %|J|<=0 and SD log J of the field, in voxels of the fixed grid (spacing-invariant; for ANTs "SyN" the SyN warp, whose
  Jacobian determinant differs from the whole map's by the affine's constant factor).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_moe_reg.apps.registration import _grid as grid_of
from monai_moe_reg.apps.registration import _warp_label, load_scan
from monai_moe_reg.metrics.jacobian import jacobian_determinant, nonpositive_jacobian_percent, sd_log_jacobian
from monai_moe_reg.metrics.overlap import dice_per_label


def aseg_cortex(label: torch.Tensor) -> torch.Tensor:
    """Cortex parcels of aparc+aseg / aparc.a2009s+aseg as aseg's cortex ids (3 left, 42 right)."""
    out = label.clone()
    out[((label >= 1000) & (label < 2000)) | ((label >= 11100) & (label < 12000))] = 3
    out[((label >= 2000) & (label < 3000)) | ((label >= 12100) & (label < 13000))] = 42
    return out


def fixed_label_on_grid(pair: dict) -> torch.Tensor:
    """``(1, *S)`` int64: the fixed label map on the fixed image's grid."""
    fixed = load_scan(pair["fixed"], "fixed image")
    lab = load_scan(pair["fixed_label"], "fixed label", label=True)
    grid = grid_of(fixed)
    return aseg_cortex(_warp_label(lab, torch.linalg.inv(grid_of(lab).affine) @ grid.affine, grid.shape, None))


def unregistered_label(pair: dict) -> torch.Tensor:
    """``(1, *S)``: the moving label map on the fixed grid through the two headers alone (no registration)."""
    fixed = load_scan(pair["fixed"], "fixed image")
    lab = load_scan(pair["moving_label"], "moving label", label=True)
    grid = grid_of(fixed)
    return _warp_label(lab, torch.linalg.inv(grid_of(lab).affine) @ grid.affine, grid.shape, None)


def score(pair: dict, warped_label: torch.Tensor, ddf: torch.Tensor | None, labels: list[int] | None,
          fixed_label: torch.Tensor | None = None) -> dict:
    """``warped_label`` ``(1, *S)`` and ``ddf`` ``(3, *S)`` (fixed voxels; ``None``: no deformation) on the fixed
    grid."""
    gt = fixed_label_on_grid(pair) if fixed_label is None else fixed_label
    pred = aseg_cortex(warped_label.long())
    ids = labels or sorted(int(v) for v in torch.unique(gt) if v != 0)
    ids = [v for v in ids if bool((gt == v).any())]
    dice = dice_per_label(pred[None], gt[None], ids)[0].numpy()
    row = {"dice": float(np.nanmean(dice)), "labels": len(ids)}
    if ddf is None:
        row.update(folding_percent=0.0, sdlogj=0.0)
    else:
        det = jacobian_determinant(ddf[None].float())
        row.update(folding_percent=float(nonpositive_jacobian_percent(None, det=det)[0]),
                   sdlogj=float(sd_log_jacobian(None, det=det)[0]))
    return row


def read_label(path: str | Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(nib.load(str(path)).dataobj).astype(np.int64))[None]


def read_field(path: str | Path) -> torch.Tensor | None:
    """The deformable field of our ``transform.h5`` ``(3, X, Y, Z)`` in fixed voxels (``None`` for an affine-only
    file). Its Jacobian differs from the total map's by the affine's constant factor: the same SD log J and folding."""
    from monai_moe_reg.data.displacement_io import read_itk_transform

    return read_itk_transform(path)[2]


def lps_field_to_ddf(path: str | Path, fixed_affine: np.ndarray) -> torch.Tensor:
    """An ITK/ANTs displacement field NIfTI (LPS mm, ``(X, Y, Z, 1, 3)``) as a DDF in voxels of the fixed grid."""
    field = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)[:, :, :, 0, :]  # (X, Y, Z, 3) LPS mm
    step = np.diag([-1.0, -1.0, 1.0]) @ fixed_affine[:3, :3]
    vox = np.einsum("ij,...j->...i", np.linalg.inv(step), field)
    return torch.from_numpy(np.moveaxis(vox, -1, 0).copy()).float()


def summary(rows: list[dict], key: str) -> str:
    """``mean (min-max)`` of ``key`` over per-pair rows."""
    v = np.array([r[key] for r in rows], dtype=float)
    fmt = "{:.3f}" if key != "seconds" else "{:.1f}"
    return f"{fmt.format(v.mean())} ({fmt.format(v.min())}-{fmt.format(v.max())})"
