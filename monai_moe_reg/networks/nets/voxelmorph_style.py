"""VoxelMorph-style calling convention for the registration nets: ``net(moving, fixed) -> (warped, ddf)``."""

from __future__ import annotations

import torch
from monai.networks.blocks import Warp
from torch import nn

__all__ = ["VoxelMorphStyle"]


class VoxelMorphStyle(nn.Module):
    """Wrap a ``net(cat([moving, fixed], 1)) -> ddf`` network (SHMoAReg, LLMMorph, LocalNet-style) so that it is
    called like MONAI's :class:`~monai.networks.nets.VoxelMorph`: ``warped, ddf = model(moving, fixed)``.

    Args:
        network: the wrapped network.
        mode: interpolation of the moving image (MONAI ``Warp``).
        padding_mode: padding of the moving image (MONAI ``Warp``).

    Shapes:
        ``moving``, ``fixed``: ``(B, C, *S)``; returns ``warped`` ``(B, C, *S)`` and ``ddf`` ``(B, spatial_dims, *S)``
        in voxel units. ``return_aux=True`` (SHMoAReg) adds the network's auxiliary outputs as a third item.
    """

    def __init__(self, network: nn.Module, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        self.network = network
        self.warp = Warp(mode=mode, padding_mode=padding_mode)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, return_aux: bool = False):
        x = torch.cat([moving, fixed], dim=1)
        out = self.network(x, return_aux=True) if return_aux else self.network(x)
        ddf, aux = out if return_aux else (out, None)
        warped = self.warp(moving, ddf)
        return (warped, ddf, aux) if return_aux else (warped, ddf)
