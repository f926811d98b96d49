"""Dual-pyramid CNN feature extractor of LLM-Morph (one image's pyramid)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["PyramidCNNEncoder"]


class PyramidCNNEncoder(nn.Module):
    """Conv pyramid giving features at 1, 1/2, 1/4, ... (one level per entry of ``channels``), Dual-PRNet style.

    Level 0 is two 3x3 convolutions at full resolution; each further level a stride-2 convolution followed by a 3x3
    convolution. LLM-Morph runs one per image (``share_encoder`` in :class:`LLMMorph` decides whether the moving and
    fixed pyramids share weights).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one image.
        channels: output channels per level, fine to coarse (LLM-Morph: 5 levels, 1 .. 1/16).
        act: activation; norm: normalisation (MONAI layer-factory specs).

    Shapes:
        ``(B, in_channels, *S)`` with ``S`` divisible by ``2**(len(channels) - 1)`` ->
        list of ``(B, channels[l], *S / 2**l)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 32, 64, 64),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
        norm: str | tuple | None = ("instance", {"affine": True}),
    ) -> None:
        super().__init__()
        self.out_channels = [int(c) for c in channels]
        self.levels = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(self.out_channels):
            self.levels.append(
                nn.Sequential(
                    Convolution(spatial_dims, prev, ch, strides=1 if i == 0 else 2, act=act, norm=norm),
                    Convolution(spatial_dims, ch, ch, act=act, norm=norm),
                )
            )
            prev = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats
