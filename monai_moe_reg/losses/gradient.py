"""The gradient regulariser the registration papers mean: forward differences, averaged over voxels and axes.

VoxelMorph's and TransMorph's ``Grad('l2')`` (and ``'l1'``), to which the papers' lambda values refer (SHMoAReg 0.01
on brain MR and 0.1 on abdominal CT, LLM-Morph 0.1, SynthMorph 1.0), is, for a displacement ``u`` ``(B, D, *S)``::

    Grad(u) = 1/D * sum_d mean_{voxels, components} |u[..., i + 1 along d] - u[..., i]|^p      (p = 2 or 1)

MONAI's :class:`~monai.losses.DiffusionLoss` is not this: it uses central differences ``(u[i+1] - u[i-1]) / 2``,
which are exactly zero on a +-a checkerboard (the field can be rough at the voxel scale for free), and it sums the
axes instead of averaging them (about 3x the value on a smooth field). Written here because MONAI has no
forward-difference gradient loss; :func:`make_regulariser` still offers ``"diffusion"`` for the MONAI loss.
"""

from __future__ import annotations

import torch
from monai.losses import DiffusionLoss
from monai.utils import LossReduction
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["GradientLoss", "make_regulariser", "REGULARISERS"]

REGULARISERS = ("gradient", "gradient_l1", "diffusion")


class GradientLoss(_Loss):
    """Mean ``p``-th power of the forward differences of a displacement field, averaged over the spatial axes.

    Args:
        penalty: ``"l2"`` (squared differences, VoxelMorph's default) or ``"l1"`` (absolute differences).
        reduction: ``"mean"`` (a scalar: the average over the batch too), ``"sum"`` (summed over the batch) or
            ``"none"`` (one value per batch item, ``(B,)``).

    Example::

        loss = GradientLoss()(ddf)          # ddf (B, 3, H, W, D) -> scalar
    """

    def __init__(self, penalty: str = "l2", reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if penalty not in ("l1", "l2"):
            raise ValueError(f"GradientLoss penalty must be 'l1' or 'l2', got {penalty!r}.")
        self.penalty = penalty

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: a displacement field ``(B, D, *S)`` with ``D`` = the number of spatial dims (1-3), every spatial
                size at least 2.

        Returns:
            a scalar (``"mean"``, ``"sum"``) or ``(B,)`` (``"none"``).
        """
        dims = pred.ndim - 2
        if dims not in (1, 2, 3) or pred.shape[1] != dims:
            raise ValueError(
                f"GradientLoss expects a displacement field (B, D, *S) with D = the number of spatial "
                f"dims, got shape {tuple(pred.shape)}."
            )
        if min(pred.shape[2:]) < 2:
            raise ValueError(f"GradientLoss needs at least 2 voxels along every spatial axis, got {tuple(pred.shape)}.")
        per_item = pred.new_zeros(pred.shape[0])
        for axis in range(2, pred.ndim):
            diff = torch.diff(pred, dim=axis)
            diff = diff * diff if self.penalty == "l2" else diff.abs()
            per_item = per_item + diff.flatten(1).mean(1)
        per_item = per_item / dims
        if self.reduction == LossReduction.MEAN.value:
            return per_item.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_item.sum()
        return per_item


def make_regulariser(name: str | nn.Module = "gradient") -> nn.Module:
    """``"gradient"`` (:class:`GradientLoss` l2, the papers' ``Grad('l2')``: the default), ``"gradient_l1"``,
    ``"diffusion"`` (MONAI's :class:`~monai.losses.DiffusionLoss`: central differences, axes summed, so about 3x
    the gradient loss for the same lambda), or any module ``ddf -> scalar``."""
    if isinstance(name, nn.Module):
        return name
    if name == "gradient":
        return GradientLoss("l2")
    if name == "gradient_l1":
        return GradientLoss("l1")
    if name == "diffusion":
        return DiffusionLoss()
    raise ValueError(f"regulariser must be one of {REGULARISERS} or an nn.Module, got {name!r}.")
