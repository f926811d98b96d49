"""Affine pre-alignment of a pair in world coordinates (mm), on image pyramids.

The transform maps fixed-world points to moving-world points: ``q = (I + L)(p - c) + c + t`` with ``c`` the fixed
image's centre of mass; ``t`` starts at the difference of the two centres of mass (first moments) and ``L`` at zero;
Adam then fits ``L`` and ``t`` level by level (coarse to fine) under an image similarity, sampling the original
moving image through the transform (:func:`monai_moe_reg.apps.spatial.warp_through`). MONAI has no affine
registration of two images (its ``AffineTransform`` block only applies one), hence this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from monai_moe_reg.apps.spatial import Grid, level_factors, pool_to, voxel_grid, warp_through
from torch import nn

__all__ = ["centre_of_mass", "affine_register", "AFFINE_MODES"]

logger = logging.getLogger(__name__)

AFFINE_MODES = ("on", "off", "only")


def centre_of_mass(image: torch.Tensor, grid: Grid) -> torch.Tensor:
    """World position (mm, float64) of the intensity centre of mass of ``image`` ``(1, 1, *S)`` (values below zero
    count as zero; an all-zero image gives the grid centre)."""
    w = image[0, 0].clamp_min(0).double()
    idx = voxel_grid(w.shape, device=w.device, dtype=torch.float64)
    total = w.sum()
    if total <= 0:
        centre = torch.tensor([(n - 1) / 2 for n in w.shape], dtype=torch.float64)
    else:
        centre = (idx * w).flatten(1).sum(1).cpu() / total.cpu()
    return grid.affine[:3, :3] @ centre + grid.affine[:3, 3]


def _matrix(lin: torch.Tensor, shift: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(4, dtype=torch.float64, device=lin.device)
    a = eye[:3, :3] + lin.double()
    return torch.cat([torch.cat([a, (centre - a @ centre + shift.double()).view(3, 1)], 1), eye[3:]], 0)


def affine_register(
    fixed: torch.Tensor,
    fixed_grid: Grid,
    moving: torch.Tensor,
    moving_grid: Grid,
    similarity: nn.Module,
    levels: Sequence[float] = (4, 2),
    steps: Sequence[int] | int = 100,
    lr: float = 0.01,
    shift_scale_mm: float = 10.0,
    tol: float = 1e-4,
    patience: int = 10,
    starts: Sequence[Sequence[float]] = (),
    start_steps: int = 30,
) -> torch.Tensor:
    """Fit the affine transform from fixed world to moving world.

    Args:
        fixed, moving: ``(1, 1, *S)`` images on their own grids, intensities scaled for ``similarity``.
        fixed_grid, moving_grid: their grids.
        similarity: ``(warped, fixed) -> scalar`` loss (MSE / LNCC within a modality, MI across).
        levels: coarsening of each level, in multiples of the fixed image's finest spacing (4 = 4 mm for a 1 mm
            scan), coarse to fine.
        steps: Adam steps per level (one number for all, or one per level).
        lr: Adam learning rate of the linear part (``L``) and of ``t / shift_scale_mm``.
        shift_scale_mm: the translation is optimised in units of this many mm.
        tol, patience: a level stops when the loss of the last ``patience`` steps improved by less than ``tol``
            (relative) over the ``patience`` before.
        starts: extra initial rotations to try besides none, each ``(rx, ry, rz)`` in degrees about the world axes
            through the fixed centre of mass: every start gets ``start_steps`` steps on the coarsest level and the
            one with the lowest loss is refined (a centre-of-mass start alone can fall into a wrong local optimum
            when the heads are tilted differently).
        start_steps: steps per start on the coarsest level.

    Returns:
        ``(4, 4)`` float64 matrix, fixed world (RAS mm) -> moving world.
    """
    steps = [int(steps)] * len(levels) if isinstance(steps, int) else [int(s) for s in steps]
    if len(steps) != len(levels):
        raise ValueError(f"affine: {len(levels)} levels but {len(steps)} step counts.")
    device = fixed.device
    centre = centre_of_mass(fixed, fixed_grid)
    start = centre_of_mass(moving, moving_grid) - centre
    base = min(fixed_grid.spacing)

    def level_images(level: float):
        ff, fm = level_factors(fixed_grid, level * base), level_factors(moving_grid, level * base)
        grid_fl, grid_ml = fixed_grid.coarsen(ff), moving_grid.coarsen(fm)
        return (
            pool_to(fixed, ff),
            pool_to(moving, fm),
            grid_fl,
            grid_fl.affine.to(device),
            torch.linalg.inv(grid_ml.affine).to(device),
        )

    def fit(lin, shift, opt, images, n_steps, stop=True) -> list[float]:
        fix_l, mov_l, grid_fl, to_fixed, from_moving = images
        history: list[float] = []
        for _ in range(n_steps):
            m = _matrix(lin, shift * shift_scale_mm, centre.to(device))
            warped = warp_through(mov_l, from_moving @ m @ to_fixed, grid_fl.shape)
            if adam_step(opt, similarity(warped, fix_l), history, tol, patience if stop else 0):
                break
        return history

    def params(angles) -> tuple[nn.Parameter, nn.Parameter]:
        rot = _rotation_matrix(angles).float().to(device)
        return (
            nn.Parameter(rot - torch.eye(3, device=device)),
            nn.Parameter((start / shift_scale_mm).float().to(device)),
        )

    lin, shift = params((0.0, 0.0, 0.0))
    if starts:  # the best of several initial rotations after a short fit on the coarsest level
        coarse = level_images(levels[0])
        best = None
        for angles in [(0.0, 0.0, 0.0), *starts]:
            cand = params(angles)
            history = fit(*cand, torch.optim.Adam(cand, lr=lr), coarse, start_steps, stop=False)
            score = sum(history[-5:]) / len(history[-5:])
            if best is None or score < best[0]:
                best = (score, cand, angles)
        (lin, shift), chosen = best[1], best[2]
        logger.info("affine start: rotation %s deg of %d tried", tuple(chosen), len(starts) + 1)
    opt = torch.optim.Adam([lin, shift], lr=lr)
    for level, n_steps in zip(levels, steps):
        images = level_images(level)
        history = fit(lin, shift, opt, images, n_steps)
        logger.info(
            "affine level %s (%s voxels): %d steps, loss %.5f", level, images[2].shape, len(history), history[-1]
        )
    with torch.no_grad():
        return _matrix(lin.detach().cpu(), shift.detach().cpu() * shift_scale_mm, centre)


def _rotation_matrix(angles_deg: Sequence[float]) -> torch.Tensor:
    """``(3, 3)`` float64 rotation: about world axis 0 (x), then 1 (y), then 2 (z), in degrees."""
    out = torch.eye(3, dtype=torch.float64)
    for axis, deg in enumerate(angles_deg):
        a = math.radians(float(deg))
        i, j = [k for k in range(3) if k != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        out = r @ out
    return out


def adam_step(opt: torch.optim.Optimizer, loss: torch.Tensor, history: list[float], tol: float, patience: int) -> bool:
    """One optimiser step on ``loss``, its value appended to ``history``; ``True`` when the level has converged
    (see :func:`_converged`)."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    history.append(float(loss.detach()))
    return _converged(history, tol, patience)


def _converged(history: Sequence[float], tol: float, patience: int) -> bool:
    """The mean loss of the last ``patience`` steps improved by less than ``tol`` (relative) on the ``patience``
    steps before."""
    if patience <= 0 or len(history) < 2 * patience:
        return False
    last = sum(history[-patience:]) / patience
    before = sum(history[-2 * patience : -patience]) / patience
    return (before - last) < tol * max(abs(before), 1e-12)
