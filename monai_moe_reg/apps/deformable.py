"""Multi-resolution deformable instance optimisation of one pair (after the affine and the network).

Coarse to fine, the fixed image and the field are taken to each level together (fixed: block average; moving:
block average on its own grid, sampled through the affine); at every level Adam fits a field ``v`` on that grid,
box-filtered, under ``similarity(warped, fixed) + lambda_reg * Grad`` (the papers' forward-difference gradient loss),
and hands it upsampled to the next
level. ``v`` is the residual displacement itself, or, with ``diffeomorphic=True``, a stationary velocity integrated
by MONAI's :class:`~monai.networks.blocks.DVF2DDF` (scaling and squaring), so the residual cannot fold. The
residual ``w`` is composed with the initial DDF ``u0`` (the network's, in the affine-aligned frame) as
``u = w + u0 o (id + w)`` (MONAI ``Warp``). A level stops early when its loss stops improving.

Written here: MONAI has the pieces (``Warp``, ``DVF2DDF``, losses) but no pyramid optimiser of a field.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from monai_moe_reg.apps.affine import adam_step
from monai_moe_reg.apps.spatial import Grid, level_factors, pool_to, resample_field, warp_through
from monai_moe_reg.losses.gradient import make_regulariser
from torch import nn
from tqdm import tqdm

__all__ = ["optimise_pyramid", "compose", "REGULARISE"]

REGULARISE = ("residual", "total")

logger = logging.getLogger(__name__)


def compose(residual: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
    """``u = w + u0 o (id + w)``: first the residual ``w``, then the initial DDF ``u0`` (both ``(B, D, *S)``, one
    grid)."""
    if initial is None:
        return residual
    return residual + Warp(mode="bilinear", padding_mode="border")(initial, residual)


def optimise_pyramid(
    fixed: torch.Tensor,
    fixed_grid: Grid,
    moving: torch.Tensor,
    moving_grid: Grid,
    transform: torch.Tensor,
    similarity: nn.Module,
    lambda_reg: float | Sequence[float] = 1.0,
    levels: Sequence[float] = (4, 2),
    steps: Sequence[int] | int = 100,
    lr: float = 0.5,
    smoothing: int = 1,
    diffeomorphic: bool = False,
    integration_steps: int = 5,
    initial: tuple[torch.Tensor, Grid] | None = None,
    regularise: str = "residual",
    tol: float = 1e-4,
    patience: int = 10,
    regulariser: str = "gradient",
    progress: bool = False,
) -> tuple[torch.Tensor, Grid, dict]:
    """Fit the deformable part of a registration on image pyramids.

    Args:
        fixed, moving: ``(1, C, *S)`` images on their own grids, scaled for ``similarity``.
        fixed_grid, moving_grid: their grids.
        transform: ``(4, 4)`` fixed-world -> moving-world affine (identity when there is no affine stage).
        similarity: ``(warped, fixed) -> scalar`` loss.
        lambda_reg: weight of the regulariser on the displacement (level voxels; see ``regularise``); one number,
            or one per level.
        levels: coarsening of each level in multiples of the fixed image's finest spacing, coarse to fine (1 = the
            fixed grid itself).
        steps: the most Adam steps per level (one number, or one per level).
        lr: Adam learning rate, in voxels of the level.
        smoothing: passes of a 3-wide box filter on the optimised field before use.
        diffeomorphic: optimise a stationary velocity integrated with ``DVF2DDF``.
        integration_steps: scaling-and-squaring steps.
        initial: optional ``(u0, grid)``: a DDF in voxels of ``grid`` (a coarsening of ``fixed_grid``) to refine.
        regularise: what the regulariser acts on: ``"residual"`` (``w``, the change made here) or ``"total"``
            (the composed ``u = w + u0 o (id + w)``, so a rough initial field is smoothed too; same as
            ``"residual"`` without ``initial``).
        tol, patience: early stop of a level (see :func:`monai_moe_reg.apps.affine.affine_register`).
        regulariser: ``"gradient"`` (the papers' forward-difference ``Grad('l2')``, default), ``"gradient_l1"`` or
            ``"diffusion"`` (MONAI's ``DiffusionLoss``), see :func:`~monai_moe_reg.losses.make_regulariser`.
        progress: show a progress bar per level.

    Returns:
        ``(w, grid, info)``: the residual DDF on the finest level's ``grid`` (level voxels) and
        ``{"steps": [...], "loss": [...]}`` per level. The registration on any grid ``G`` of the fixed world is
        ``compose(resample_field(w, grid, G), resample_field(u0, u0_grid, G))``.
    """
    if not len(levels):
        raise ValueError("instance optimisation needs at least one level (levels, e.g. [4, 2]).")
    steps = [int(steps)] * len(levels) if isinstance(steps, int) else [int(s) for s in steps]
    if len(steps) != len(levels):
        raise ValueError(f"instance optimisation: {len(levels)} levels but {len(steps)} step counts.")
    one = isinstance(lambda_reg, (int, float))
    lambdas = [float(lambda_reg)] * len(levels) if one else [float(v) for v in lambda_reg]
    if lr <= 0 or len(lambdas) != len(levels) or min(lambdas) < 0:
        raise ValueError(
            f"instance optimisation needs lr > 0 and lambda_reg >= 0 (one, or one per level), got "
            f"lr={lr}, "
            f"lambda_reg={lambda_reg}."
        )
    if regularise not in REGULARISE:
        raise ValueError(f"instance optimisation: regularise must be one of {REGULARISE}, got {regularise!r}.")
    device = fixed.device
    integrate = DVF2DDF(num_steps=integration_steps) if diffeomorphic else None
    reg = make_regulariser(regulariser)
    base = min(fixed_grid.spacing)
    field, grid = None, None
    info: dict = {"steps": [], "loss": []}
    for level, n_steps, lam in zip(levels, steps, lambdas):
        ff, fm = level_factors(fixed_grid, level * base), level_factors(moving_grid, level * base)
        new_grid = fixed_grid.coarsen(ff)
        fix_l, mov_l = pool_to(fixed, ff), pool_to(moving, fm)
        matrix = (torch.linalg.inv(moving_grid.coarsen(fm).affine) @ transform @ new_grid.affine).to(device)
        u0 = resample_field(initial[0].to(device), initial[1], new_grid) if initial is not None else None
        with torch.no_grad():
            start = (
                torch.zeros(1, len(ff), *new_grid.shape, device=device)
                if field is None
                else resample_field(field, grid, new_grid)
            )
        field, grid = nn.Parameter(start), new_grid
        opt = torch.optim.Adam([field], lr=lr)
        history: list[float] = []
        bar = tqdm(range(n_steps), desc=f"instance optimisation {grid.shape}", file=sys.stdout, disable=not progress)
        for _ in bar:
            w = _residual(field, smoothing, integrate)
            u = compose(w, u0)
            warped = warp_through(mov_l, matrix, grid.shape, u)
            if adam_step(
                opt, similarity(warped, fix_l) + lam * reg(u if regularise == "total" else w), history, tol, patience
            ):
                break
        info["steps"].append(len(history))
        info["loss"].append(history[-1] if history else float("nan"))
        logger.info(
            "instance optimisation level %s %s: %d steps, loss %.5f", level, grid.shape, len(history), info["loss"][-1]
        )
    with torch.no_grad():
        w = _residual(field.detach(), smoothing, integrate)
    return w, grid, info


def _residual(field: torch.Tensor, smoothing: int, integrate: nn.Module | None) -> torch.Tensor:
    v = _smooth(field, smoothing)
    return integrate(v) if integrate is not None else v


def _smooth(field: torch.Tensor, times: int) -> torch.Tensor:
    """``times`` passes of a 3-wide box filter (edges averaged over the voxels inside): a cheap smoothness prior on
    the optimised field, as in ConvexAdam's Adam stage. Adam scales every component's step to about ``lr`` whatever
    its gradient, so components with only rounding-noise gradients (flat background) would wander; the filter keeps
    the used field smooth."""
    pool = F.avg_pool3d if field.ndim == 5 else F.avg_pool2d
    for _ in range(times):
        field = pool(field, 3, stride=1, padding=1, count_include_pad=False)
    return field
