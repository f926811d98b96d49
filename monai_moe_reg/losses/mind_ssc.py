"""MIND-SSC similarity for multimodal registration (MONAI has none; written by hand).

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using self-similarities"
(MICCAI 2013): a 12-channel self-similarity-context descriptor per voxel, compared with the mean squared difference.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mind_ssc", "MINDSSCLoss"]


def _shift(x: torch.Tensor, offset: tuple[int, int, int]) -> torch.Tensor:
    """``x`` shifted by ``offset`` voxels (replicate padding at the border), same shape."""
    r = max(abs(o) for o in offset)
    padded = F.pad(x, [r] * 6, mode="replicate")
    d, h, w = x.shape[2:]
    return padded[
        :, :, r + offset[0] : r + offset[0] + d, r + offset[1] : r + offset[1] + h, r + offset[2] : r + offset[2] + w
    ]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor ``(B, 12, D, H, W)`` of a ``(B, 1, D, H, W)`` image.

    The six face neighbours at distance ``dilation`` give 12 pairs at squared distance 2 (the self-similarity
    context); each pair's patch SSD (box of side ``2 * radius + 1``) is turned into ``exp(-ssd / variance)`` with the
    per-voxel variance estimate clamped around its mean, as in the reference implementation.
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"MIND-SSC expects a (B, 1, D, H, W) image, got {tuple(image.shape)}.")
    six = [(0, 1, 1), (1, 1, 0), (1, 0, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1)]
    pairs = [(a, b) for a, b in itertools.combinations(six, 2) if sum((p - q) ** 2 for p, q in zip(a, b)) == 2]
    k = 2 * radius + 1
    ssd = []
    for a, b in pairs:
        oa = tuple(dilation * (v - 1) for v in a)
        ob = tuple(dilation * (v - 1) for v in b)
        diff = (_shift(image, oa) - _shift(image, ob)) ** 2
        ssd.append(F.avg_pool3d(F.pad(diff, [radius] * 6, mode="replicate"), k, stride=1))
    ssd = torch.cat(ssd, dim=1)
    ssd = ssd - ssd.amin(dim=1, keepdim=True)
    var = ssd.mean(dim=1, keepdim=True)
    mean_var = var.mean()
    var = var.clamp(min=mean_var.item() * 1e-3 + 1e-12, max=mean_var.item() * 1e3 + 1e-12)
    return torch.exp(-ssd / var)


class MINDSSCLoss(nn.Module):
    """Mean squared difference of the MIND-SSC descriptors of the warped moving and the fixed image (3-D only).

    Args:
        radius: patch radius; dilation: neighbour distance (voxels).
    """

    def __init__(self, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        self.radius = radius
        self.dilation = dilation

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(mind_ssc(warped, self.radius, self.dilation), mind_ssc(fixed, self.radius, self.dilation))
