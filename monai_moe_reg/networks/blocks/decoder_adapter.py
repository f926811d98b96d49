"""LLM-Morph decoder adapters: LLM tokens back to multi-scale volumetric features by pixel shuffle."""

from __future__ import annotations

import torch
from monai.networks.utils import pixelshuffle
from torch import nn

__all__ = ["DecoderAdapter", "tokens_to_volume", "volume_to_tokens"]


def volume_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """The tokeniser: ``(B, C, *S) -> (B, L, C)`` with ``L = prod(S)`` (one token per voxel, C-order)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_volume(tokens: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`volume_to_tokens`: ``(B, L, C) -> (B, C, *spatial)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *spatial)


class DecoderAdapter(nn.Module):
    """Maps LLM tokens of the 1/16 grid to features at ``1/16 * upscale``: linear to ``out_tokens`` channels, then a
    ``spatial_dims``-D pixel shuffle by ``upscale`` (MONAI ``pixelshuffle``), giving ``out_tokens / upscale**D``
    channels. LLM-Morph: ``out_tokens`` 256, 1024, 4096, 16384 with ``upscale`` 2, 4, 8, 16 -> 32, 16, 8, 4 channels
    at 1/8, 1/4, 1/2 and full resolution.

    Args:
        spatial_dims: 2 or 3.
        in_features: LLM hidden size.
        out_tokens: channels per token after the projection (divisible by ``upscale**spatial_dims``).
        upscale: spatial upsampling factor of the pixel shuffle.

    Shapes:
        ``forward(tokens (B, L, in_features), grid (d, h, w))`` -> ``(B, out_tokens / upscale**D, *grid * upscale)``.
    """

    def __init__(self, spatial_dims: int, in_features: int, out_tokens: int, upscale: int) -> None:
        super().__init__()
        if out_tokens % upscale**spatial_dims:
            raise ValueError(
                f"out_tokens {out_tokens} must be divisible by upscale**spatial_dims = {upscale**spatial_dims}."
            )
        self.spatial_dims = spatial_dims
        self.upscale = upscale
        self.out_channels = out_tokens // upscale**spatial_dims
        self.proj = nn.Linear(in_features, out_tokens)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        x = tokens_to_volume(self.act(self.proj(tokens)), tuple(grid))
        return pixelshuffle(x, self.spatial_dims, self.upscale)
