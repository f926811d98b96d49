"""Single-grid instance optimisation of one pair after the network: refine the displacement field itself (used by
``bench/accuracy.py``; ``monai-moe-reg register`` uses the multi-resolution :mod:`monai_moe_reg.apps.deformable`).

``optimise_field`` is the usual meaning of instance optimisation in learned registration (as in the Learn2Reg
challenge entries): the network's DDF is the initial value of a field that Adam then fits to this one pair under an
image similarity plus the papers' gradient loss. The field is kept on a grid ``coarsen`` times coarser than the
fixed image, box-filtered and upsampled linearly (cheap smoothness priors, as in ConvexAdam's Adam stage). Neither MONAI nor the two papers provide it, so it is
written here.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp
from torch import nn
from tqdm import tqdm

from monai_moe_reg.losses.gradient import make_regulariser
from monai_moe_reg.networks.blocks.flow import upsample_ddf

__all__ = ["optimise_field"]


def optimise_field(
    ddf: torch.Tensor,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: nn.Module,
    steps: int,
    lr: float = 0.05,
    lambda_reg: float = 0.01,
    coarsen: int = 2,
    smoothing: int = 3,
    progress: bool = True,
    regulariser: str = "gradient",
) -> torch.Tensor:
    """Refine a DDF on one pair.

    Args:
        ddf: initial DDF ``(1, D, *S)`` in voxels of the fixed grid (e.g. the network's prediction; zeros to start
            from identity).
        moving, fixed: ``(1, C, *S)`` images on the fixed grid, scaled as the network saw them.
        similarity: ``(warped, fixed) -> scalar`` loss (MSE / LNCC for one modality, MIND-SSC or MI across
            modalities).
        steps: Adam steps.
        lr: Adam learning rate, in voxels of the coarse grid.
        lambda_reg: weight of the regulariser on the coarse field.
        coarsen: the field is optimised on a grid ``coarsen`` times coarser per axis (1 = the fixed grid).
        smoothing: passes of a 3-wide box filter applied to the field before use (0 = none). Adam scales every
            component's step to about ``lr`` whatever its gradient, so components with only rounding-noise gradients
            (flat background) would wander; the filter keeps the used field smooth.
        progress: show a progress bar.
        regulariser: see :func:`~monai_moe_reg.losses.make_regulariser` (``"diffusion"``: MONAI's ``DiffusionLoss``).

    Returns:
        the refined DDF ``(1, D, *S)`` (detached).
    """
    if ddf.ndim != moving.ndim or ddf.shape[0] != 1 or ddf.shape[2:] != fixed.shape[2:] or moving.shape != fixed.shape:
        raise ValueError(
            f"optimise_field needs one pair on one grid: ddf {tuple(ddf.shape)}, moving {tuple(moving.shape)}, "
            f"fixed {tuple(fixed.shape)}."
        )
    if coarsen < 1:
        raise ValueError(f"coarsen must be >= 1, got {coarsen}.")
    if lr <= 0 or lambda_reg < 0:
        raise ValueError(f"field instance optimisation needs lr > 0 and lambda_reg >= 0, got lr={lr}, "
                         f"lambda_reg={lambda_reg}.")
    size = tuple(ddf.shape[2:])
    coarse = tuple(max(1, s // coarsen) for s in size)
    with torch.no_grad():  # resize to the coarse grid, vectors rescaled per axis
        field = nn.Parameter(upsample_ddf(ddf.float(), coarse))
    opt = torch.optim.Adam([field], lr=lr)
    warp, reg = Warp(mode="bilinear", padding_mode="border"), make_regulariser(regulariser)
    moving, fixed = moving.float().detach(), fixed.float().detach()
    bar = tqdm(range(steps), desc="instance optimisation (field)", file=sys.stdout, disable=not progress)
    for _ in bar:
        smooth = _smooth(field, smoothing)
        loss = similarity(warp(moving, upsample_ddf(smooth, size)), fixed) + lambda_reg * reg(smooth)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.5f}")
    return upsample_ddf(_smooth(field.detach(), smoothing), size)


def _smooth(field: torch.Tensor, times: int) -> torch.Tensor:
    """``times`` passes of a 3-wide box filter (edges averaged over the voxels inside)."""
    pool = F.avg_pool3d if field.ndim == 5 else F.avg_pool2d
    for _ in range(times):
        field = pool(field, 3, stride=1, padding=1, count_include_pad=False)
    return field
