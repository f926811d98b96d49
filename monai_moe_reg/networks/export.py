"""TorchScript form of the registration networks for any input size (``torch.jit.script(net)`` works).

SHMoAReg's Swin encoder (like MONAI's SwinUNETR, which the Model Zoo exempts from scripting) and LLM-Morph's
Hugging Face decoder layers are not TorchScript-compilable, and a plain trace only replays the traced size. The
networks therefore define ``__prepare_scriptable__`` (called by ``torch.jit.script`` and so by MONAI's
``ckpt_export`` and the zoo's ``verify_torchscript``): it traces the network in eval mode at its export grid and
wraps the trace in :class:`FixedGridExport`, which resamples any input pair to that grid and the predicted
displacement field back (vectors rescaled per axis), the way fixed-size registration networks (TransMorph,
VoxelMorph) are applied to other sizes. Written here because neither MONAI nor PyTorch has it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["FixedGridExport", "script_at_grid"]


class FixedGridExport(nn.Module):
    """A traced registration network run at a fixed ``grid``, applicable to pairs of any size.

    Args:
        traced: the network traced at ``grid`` (``(B, 2C, *grid) -> (B, D, *grid)``, voxel units).
        grid: spatial size the network runs at.

    Shapes:
        ``(B, 2C, *S) -> (B, D, *S)`` for any ``S``; voxel units of the input grid. An input already of size
        ``grid`` runs without resampling (the trace itself).
    """

    def __init__(self, traced: torch.jit.ScriptModule, grid: Sequence[int]) -> None:
        super().__init__()
        self.net = traced
        self.grid = [int(g) for g in grid]
        self.mode = "trilinear" if len(self.grid) == 3 else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: list[int] = [int(s) for s in x.shape[2:]]
        if size == self.grid:
            return self.net(x)
        ddf = self.net(F.interpolate(x, size=self.grid, mode=self.mode, align_corners=True))
        ddf = F.interpolate(ddf, size=size, mode=self.mode, align_corners=True)
        scale = [(s - 1) / max(g - 1, 1) for s, g in zip(size, self.grid)]  # grid voxels -> input voxels per axis
        shape = [1, len(scale)] + [1] * len(size)
        return ddf * torch.tensor(scale, dtype=ddf.dtype, device=ddf.device).view(shape)


def script_at_grid(
    network: nn.Module, grid: Sequence[int] | int, in_channels: int, spatial_dims: int
) -> FixedGridExport:
    """Trace ``network`` in eval mode (value checks off) at ``grid`` on its own device and wrap it in
    :class:`FixedGridExport`; the network's mode and ``check_values`` are restored afterwards."""
    grid = ensure_tuple_rep(grid, spatial_dims)
    param = next(network.parameters())
    example = torch.rand(1, 2 * in_channels, *grid, device=param.device, dtype=param.dtype)
    training, checks = network.training, getattr(network, "check_values", False)
    network.eval()
    network.check_values = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shape arithmetic becomes constants of the grid; the routing was checked to replay exactly (tests)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(network, example, check_trace=False)
    finally:
        network.train(training)
        network.check_values = checks
    return FixedGridExport(traced, grid)
