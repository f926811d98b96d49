"""Per-label overlap and surface distances between integer label maps, surface distances in mm."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

__all__ = ["label_channels", "dice_per_label", "hd95_mm", "assd_mm", "surface_distances_mm"]


def label_channels(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Binary channels ``(B, L, *S)`` of ``pred`` and ``target`` for each label id (background 0 excluded).

    Args:
        pred, target: integer label maps ``(B, 1, *S)`` of the same shape.
        labels: label ids to evaluate; default every non-zero id present in ``target`` or ``pred``.
    """
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[1] != 1:
        raise ValueError(
            f"expected two label maps shaped (B, 1, *S) of the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    if labels is None:
        labels = sorted(int(v) for v in torch.unique(torch.cat([pred.flatten(), target.flatten()])) if v != 0)
    labels = [int(v) for v in labels]
    if not labels:
        raise ValueError("no foreground label to evaluate: both label maps are empty (all zeros).")
    p = torch.cat([(pred == v) for v in labels], dim=1).float()
    t = torch.cat([(target == v) for v in labels], dim=1).float()
    return p, t, labels


def dice_per_label(pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None) -> torch.Tensor:
    """Dice ``2|P n T| / (|P| + |T|)`` per label: ``(B, L)``; NaN where the label is absent from both maps."""
    p, t, _ = label_channels(pred, target, labels)
    return compute_dice(p, t, include_background=True, ignore_empty=True)


def _spacing(spacing: Sequence[float] | float | None, dims: int) -> list[float]:
    if spacing is None:
        return [1.0] * dims
    s = [float(spacing)] * dims if np.isscalar(spacing) else [float(v) for v in spacing]
    if len(s) != dims or any(v <= 0 for v in s):
        raise ValueError(f"spacing needs {dims} positive values (mm per voxel along each axis), got {spacing}.")
    return s


def hd95_mm(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
) -> torch.Tensor:
    """Symmetric 95th-percentile Hausdorff distance per label in mm (``spacing`` mm per voxel): ``(B, L)``.

    MONAI's Ignite handlers do not pass voxel spacing; this calls ``compute_hausdorff_distance`` with it.
    NaN/inf where a label is missing from one of the maps (MONAI's convention).
    """
    p, t, _ = label_channels(pred, target, labels)
    return compute_hausdorff_distance(
        p, t, include_background=True, percentile=95, spacing=_spacing(spacing, p.ndim - 2)
    )


def assd_mm(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
) -> torch.Tensor:
    """Average symmetric surface distance per label in mm: all surface-to-surface distances of both directions
    pooled and averaged (Taha & Hanbury), ``(B, L)``."""
    p, t, _ = label_channels(pred, target, labels)
    return compute_average_surface_distance(
        p, t, include_background=True, symmetric=True, spacing=_spacing(spacing, p.ndim - 2)
    )


def surface_distances_mm(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hd95_mm` and :func:`assd_mm` at once, ``(B, L)`` each, from one pair of distance transforms per label
    computed on the labels' bounding box only (same definitions as MONAI: surface = mask minus its erosion; HD95 =
    the larger of the two directed 95th percentiles). Several times faster on full-size scans, where the two MONAI
    calls each transform the whole volume."""
    from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

    p, t, labels = label_channels(pred, target, labels)
    dims = p.ndim - 2
    sp = _spacing(spacing, dims)
    hd = torch.full(p.shape[:2], float("nan"), dtype=torch.float64)
    assd = hd.clone()
    struct = generate_binary_structure(dims, 1)

    def directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # distances (mm) of the surface a to the surface b
        return distance_transform_edt(~b, sampling=sp)[a]

    # scipy's distance transform releases the GIL: the two directions run in parallel
    with ThreadPoolExecutor(max_workers=2) as pool:
        for b in range(p.shape[0]):
            for c in range(p.shape[1]):
                pm, tm = p[b, c].numpy() > 0, t[b, c].numpy() > 0
                if not pm.any() or not tm.any():
                    if pm.any() != tm.any():
                        hd[b, c] = assd[b, c] = float("inf")
                    continue
                box = np.argwhere(pm | tm)
                lo, hi = np.maximum(box.min(0) - 2, 0), box.max(0) + 3
                crop = tuple(slice(int(a), int(z)) for a, z in zip(lo, hi))
                pm, tm = np.pad(pm[crop], 1), np.pad(tm[crop], 1)  # a margin so that masks touching the box edge erode
                pe = pm ^ binary_erosion(pm, struct)
                te = tm ^ binary_erosion(tm, struct)
                d_pt, d_tp = pool.submit(directed, pe, te), pool.submit(directed, te, pe)
                d_pt, d_tp = d_pt.result(), d_tp.result()
                hd[b, c] = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
                assd[b, c] = float(np.concatenate([d_pt, d_tp]).mean())
    return hd, assd
