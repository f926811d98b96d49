"""All registration metrics of one batch of pairs at once (used by the evaluator, the CLI and the benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai_moe_reg.metrics.jacobian import jacobian_determinant, nonpositive_jacobian_percent, sd_log_jacobian
from monai_moe_reg.metrics.overlap import dice_per_label, surface_distances_mm

__all__ = ["METRIC_NAMES", "to_label_map", "registration_metrics", "summarize_metrics"]

METRIC_NAMES = ("dice", "hd95_mm", "assd_mm", "folding_percent", "sdlogj")


def to_label_map(label: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *S)`` integer map from an integer map or from multi-channel binary maps ``(B, C, *S)`` (channel
    ``c`` -> label ``c + 1``; where channels overlap the last wins)."""
    if label.shape[1] == 1:
        return label.round().long()
    out = torch.zeros_like(label[:, :1], dtype=torch.long)
    for c in range(label.shape[1]):
        out[label[:, c : c + 1] > 0.5] = c + 1
    return out


def registration_metrics(
    ddf: torch.Tensor,
    warped_label: torch.Tensor | None = None,
    fixed_label: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    det: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Per pair: mean Dice over labels, mean HD95 and ASSD in mm (``spacing`` mm per voxel), %|J|<=0, SD log J.

    Label metrics are NaN when no labels are given; labels absent from both maps are ignored in the means.
    ``det``: the Jacobian determinant of ``ddf`` when the caller already has it (``(B, *S')``), else computed.
    Returns one dict per batch item.
    """
    det = jacobian_determinant(ddf) if det is None else det
    folding = nonpositive_jacobian_percent(None, det=det).tolist()
    sdlogj = sd_log_jacobian(None, det=det).tolist()
    rows = [{"folding_percent": f, "sdlogj": s} for f, s in zip(folding, sdlogj)]
    nan = float("nan")
    if warped_label is None or fixed_label is None:
        for r in rows:
            r.update(dice=nan, hd95_mm=nan, assd_mm=nan)
        return rows
    pred, gt = to_label_map(warped_label), to_label_map(fixed_label)
    if labels is None:
        labels = sorted(int(v) for v in torch.unique(gt) if v != 0)
    if not labels:
        raise ValueError("the fixed label map is empty (no foreground label): cannot compute Dice/HD95/ASSD.")
    dice = dice_per_label(pred, gt, labels)
    hd, assd = surface_distances_mm(pred, gt, labels, spacing)
    for b, r in enumerate(rows):
        finite = lambda t: [float(v) for v in t[b].tolist() if np.isfinite(v)]  # noqa: E731
        r["dice"] = float(np.mean(finite(dice))) if finite(dice) else nan
        r["hd95_mm"] = float(np.mean(finite(hd))) if finite(hd) else nan
        r["assd_mm"] = float(np.mean(finite(assd))) if finite(assd) else nan
    return rows


def summarize_metrics(rows: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """Mean and std of each of :data:`METRIC_NAMES` over per-pair rows, NaNs ignored (NaN where no row has one)."""
    out = {}
    for key in METRIC_NAMES:
        values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        out[key] = (float(values.mean()), float(values.std())) if values.size else (float("nan"), float("nan"))
    return out
