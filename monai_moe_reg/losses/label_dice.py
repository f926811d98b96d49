"""Dice between the warped moving labels and the fixed labels: the supervised term of LLM-Morph and of
SynthMorph-style training (both networks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.blocks import Warp
from torch import nn

__all__ = ["WarpedLabelDice", "to_one_hot_labels"]


def to_one_hot_labels(label: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """Float one-hot channels ``(B, C, *S)`` from an integer map ``(B, 1, *S)`` (needs ``num_classes``, background
    included), or a multi-channel binary map ``(B, C, *S)`` unchanged (as float)."""
    if label.shape[1] > 1:
        return label.float()
    if num_classes is None:
        raise ValueError("integer label maps (B, 1, *S) need num_classes (background included) to be one-hot encoded.")
    lab = label[:, 0].long()
    _check_ids(lab, num_classes)
    return F.one_hot(lab, num_classes).movedim(-1, 1).float()


def _check_ids(label: torch.Tensor, num_classes: int) -> None:
    """A ``ValueError`` unless every value of the integer map ``label`` lies in ``0..num_classes-1``."""
    if label.min() < 0 or label.max() >= num_classes:
        raise ValueError(f"label values must lie in 0..{num_classes - 1}, got {int(label.min())}..{int(label.max())}.")


class WarpedLabelDice(nn.Module):
    """MONAI :class:`DiceLoss` (background excluded) of the one-hot moving labels warped by ``ddf`` (linear
    interpolation of the channels: differentiable) against the one-hot fixed labels.

    Args:
        num_classes: when given, integer maps must hold values ``0..num_classes-1`` (background included; a value
            outside is an error); the Dice is over the ids present either way. Multi-channel binary maps need none
            (every channel is foreground).
        max_labels: with many structures (e.g. 148 brain regions), the Dice of a random subset of at most this many
            foreground labels present in either map, drawn anew at each call from torch's RNG (seeded by
            ``set_determinism``): the one-hot maps and their warp then cost ``max_labels`` channels instead of
            ``num_classes``; every label is still trained on over the steps. ``None``: all labels.

    Integer maps are relabelled ``1..K`` over the foreground ids present in either map before one-hot encoding
    (contiguous remapping), so that sparse ids do not dilute the mean with empty channels: ids {0, 3, 7} with
    ``num_classes`` 8 give the loss of {0, 1, 2} with 3 classes (before, empty channels counted as perfect overlaps
    and scaled the term down, e.g. 0.105 instead of 0.367); ``num_classes`` still bounds the ids.

    ``forward(ddf, moving_label, fixed_label)``: ``ddf`` ``(B, D, *S)``, labels ``(B, 1, *S)`` integer or
    ``(B, C, *S)`` binary -> scalar.
    """

    def __init__(self, num_classes: int | None = None, max_labels: int | None = None) -> None:
        super().__init__()
        if max_labels is not None and int(max_labels) < 1:
            raise ValueError(f"max_labels must be a positive number of labels (or None for all), got {max_labels}.")
        self.num_classes = num_classes
        self.max_labels = None if max_labels is None else int(max_labels)
        self.dice = DiceLoss(include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)
        self.warp = Warp(mode="bilinear", padding_mode="zeros")

    def forward(
        self, ddf: torch.Tensor, moving_label: torch.Tensor | None, fixed_label: torch.Tensor | None
    ) -> torch.Tensor:
        if moving_label is None or fixed_label is None:
            raise ValueError("the label Dice term needs moving_label and fixed_label (or set its weight to 0).")
        if moving_label.shape[1] == 1 and fixed_label.shape[1] == 1:
            moving_label, fixed_label, present = self._subset(moving_label, fixed_label)
            if present == 0:  # background only in both maps: nothing to overlap
                return ddf.sum() * 0.0
            num_classes = present + 1  # only labels present in a map: no empty channel dilutes the mean
        else:
            num_classes = self.num_classes
        mov = to_one_hot_labels(moving_label, num_classes)
        fix = to_one_hot_labels(fixed_label, num_classes)
        if mov.shape[1] != fix.shape[1] or mov.shape[2:] != ddf.shape[2:]:
            raise ValueError(
                f"labels must match each other in channels and the DDF in size: moving {tuple(mov.shape)}, "
                f"fixed {tuple(fix.shape)}, ddf {tuple(ddf.shape)}."
            )
        if moving_label.shape[1] > 1:  # multi-channel binary maps: every channel is foreground
            mov = torch.cat([1 - mov.amax(1, keepdim=True), mov], 1)
            fix = torch.cat([1 - fix.amax(1, keepdim=True), fix], 1)
        return self.dice(self.warp(mov, ddf), fix)

    def _subset(self, moving_label: torch.Tensor, fixed_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Both maps relabelled ``1..K`` for the foreground ids present in either (a random subset of
        ``K <= max_labels`` of them when ``max_labels`` is set; the rest become background), and ``K``."""
        both = torch.cat([moving_label.long().flatten(), fixed_label.long().flatten()])
        if self.num_classes is not None:
            _check_ids(both, self.num_classes)
        ids = torch.unique(both)
        ids = ids[ids != 0]
        if self.max_labels is not None and ids.numel() > self.max_labels:
            ids = ids[torch.randperm(ids.numel(), device=ids.device)[: self.max_labels]]
        lut = torch.zeros(int(both.max()) + 1, dtype=torch.long, device=both.device)
        lut[ids] = torch.arange(1, ids.numel() + 1, device=both.device)
        return lut[moving_label.long()], lut[fixed_label.long()], int(ids.numel())
