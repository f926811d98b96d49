"""Displacement-field operations shared by the registration pyramids (voxel units, MONAI ``Warp`` convention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from torch import nn

__all__ = ["upsample_ddf", "ResidualFlowComposer"]


def upsample_ddf(ddf: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """Upsample a dense displacement field by 2 (or to ``size``) and rescale its vectors to the new voxel grid.

    Linear interpolation with ``align_corners=False`` (voxel centres map as ``x_fine = 2 x_coarse + 0.5``), so a
    displacement of ``u`` coarse voxels becomes ``2 u`` fine voxels; with ``size`` each channel is scaled by the
    size ratio of its axis.

    Args:
        ddf: ``(B, D, *S)`` in voxel units.
        size: target spatial size; default ``2 * S``.

    Returns:
        ``(B, D, *size)`` in voxel units of the new grid.
    """
    spatial = ddf.shape[2:]
    size = tuple(2 * s for s in spatial) if size is None else tuple(size)
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    out = F.interpolate(ddf, size=size, mode=mode, align_corners=False)
    scale = torch.tensor([t / s for t, s in zip(size, spatial)], dtype=out.dtype, device=out.device)
    return out * scale.view(1, -1, *([1] * len(spatial)))


class ResidualFlowComposer(nn.Module):
    """Turns a predicted residual into a displacement and composes it with the current flow.

    ``phi_new(x) = phi(x + w(x))``, i.e. ``u_new = warp(u, w) + w`` where ``w`` is the residual displacement (the
    moving features were already warped by ``u``, so the residual is estimated in the warped frame). With
    ``diffeomorphic=True`` the residual is a stationary velocity integrated by MONAI's :class:`DVF2DDF` (scaling
    and squaring, ``integration_steps`` steps) before composing, so the result is a composition of diffeomorphisms.

    Args:
        spatial_dims: 2 or 3 (for the interpolation mode check only).
        diffeomorphic: integrate residual velocities.
        integration_steps: scaling-and-squaring steps (paper / RDP: 7).
    """

    def __init__(self, spatial_dims: int = 3, diffeomorphic: bool = False, integration_steps: int = 7) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.diffeomorphic = diffeomorphic
        self.integrate = DVF2DDF(num_steps=integration_steps) if diffeomorphic else None
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def residual_to_ddf(self, residual: torch.Tensor) -> torch.Tensor:
        """Displacement of one level: the residual itself, or its integrated velocity."""
        return self.integrate(residual) if self.integrate is not None else residual

    def forward(self, flow: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
        """``flow``: ``(B, D, *S)`` or ``None`` at the coarsest level; ``residual``: ``(B, D, *S)``."""
        w = self.residual_to_ddf(residual)
        if flow is None:
            return w
        return self.warp(flow, w) + w
