"""DualPyramid feature encoder of LLM-Morph (Kang et al., Dual-PRNet, MedIA 2022): one image's feature pyramid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai_moe_reg.networks.blocks.pyramid_cnn_encoder import PyramidCNNEncoder
from torch import nn

__all__ = ["DualPyramidEncoder"]


class DualPyramidEncoder(nn.Module):
    """Bottom-up conv pathway to ``1/2**(L-1)`` and a top-down (feature-pyramid) pathway back to full resolution.

    Dual-PRNet encodes each image of the pair with the same network (the two streams share weights) whose
    bottom-up pathway downsamples and whose top-down pathway upsamples and merges the lateral bottom-up feature of
    every level, so each output level sees both fine detail and coarse context. LLM-Morph takes the five levels
    (full .. 1/16) of each stream: the 1/16 pair is tokenised for the LLM, and the 1/8 .. full pairs feed the decoding
    stages S4 .. S1.

    The bottom-up pathway is a :class:`PyramidCNNEncoder` (level 0: two 3x3 convolutions at full resolution; each
    further level a stride-2 convolution and a 3x3 convolution). Top-down: the coarsest output is the coarsest
    bottom-up feature; every finer output is a 3x3
    convolution of ``[bottom-up feature of that level, upsampled (linear) coarser output]``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one image.
        channels: channels per level, fine to coarse (LLM-Morph: 5 levels, 1 .. 1/16).
        act: activation; norm: normalisation (MONAI layer-factory specs).

    Shapes:
        ``(B, in_channels, *S)`` with ``S`` divisible by ``2**(len(channels) - 1)`` ->
        list of ``(B, channels[l], *S / 2**l)``, fine to coarse.
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
        if len(channels) < 2:
            raise ValueError(f"DualPyramidEncoder needs at least 2 levels, got channels={tuple(channels)}.")
        self.spatial_dims = spatial_dims
        self.out_channels = [int(c) for c in channels]
        self.bottom_up = PyramidCNNEncoder(spatial_dims, in_channels, channels, act=act, norm=norm)
        self.up = nn.ModuleList(
            Convolution(spatial_dims, ch + coarser, ch, act=act, norm=norm)
            for ch, coarser in zip(self.out_channels[:-1], self.out_channels[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bottom_up = self.bottom_up(x)
        out = [bottom_up[-1]]
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        for lv in reversed(range(len(self.up))):
            coarser = F.interpolate(out[0], size=bottom_up[lv].shape[2:], mode=mode, align_corners=False)
            out.insert(0, self.up[lv](torch.cat([bottom_up[lv], coarser], dim=1)))
        return out
