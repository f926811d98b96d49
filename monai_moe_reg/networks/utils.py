"""Input checks and stride padding shared by the registration nets (``net(cat([moving, fixed], 1)) -> ddf``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "check_pair_input",
    "check_pair_output",
    "prepare_pair_input",
    "encode_pair",
    "pad_to_multiple",
    "crop_spatial",
]


def _compiling() -> bool:
    """Whether ``torch.compile`` is tracing this call (the value checks read tensors back to the host, a graph
    break; they run only in eager mode)."""
    return bool(torch.compiler.is_compiling())


def check_pair_input(
    x: torch.Tensor, spatial_dims: int, channels: int = 2, name: str = "network", check_values: bool = True
) -> None:
    """Raise a ``ValueError`` naming the problem unless ``x`` is a non-empty floating-point ``(B, channels, *S)``
    tensor (and, with ``check_values``, finite).

    Args:
        x: the network input, moving and fixed images concatenated on channels.
        spatial_dims: expected number of spatial dimensions.
        channels: expected channel count (2: one moving and one fixed channel).
        name: the network's name for the message.
        check_values: also look at the values (NaN/Inf). This reads the tensor back to the host, a GPU sync, so
            training loops whose data pipeline already checked its images (the bundles' ``CheckFinited``) turn it off.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} expects a torch.Tensor shaped (B, {channels}, *spatial), got {type(x).__name__}.")
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{name} expects a (B, {channels}, " + ", ".join("HWD"[:spatial_dims]) + f") tensor with {spatial_dims} "
            f"spatial dims, got shape {tuple(x.shape)} ({x.ndim - 2} spatial dims)."
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} expects {channels} channels (moving and fixed concatenated: torch.cat([moving, fixed], dim=1)), "
            f"got {x.shape[1]} channels in shape {tuple(x.shape)}."
        )
    if x.shape[0] == 0 or any(s == 0 for s in x.shape[2:]):
        raise ValueError(
            f"{name} got an empty input of shape {tuple(x.shape)}; it needs at least one pair and one voxel."
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point tensor, got dtype {x.dtype}; call .float() first.")
    if check_values and not _compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} input contains NaN or Inf values; clean or mask the images before registration.")


def check_pair_output(ddf: torch.Tensor, x: torch.Tensor, name: str = "network") -> None:
    """Raise a ``ValueError`` if the network turned the finite input ``x`` into a non-finite ``ddf`` (typically
    intensities far outside the [0, 1] range the networks are trained on overflow a layer)."""
    if _compiling():  # a host sync would break the torch.compile graph: the check runs in eager mode only
        return
    if not bool(torch.isfinite(ddf).all()):
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(
            f"{name} produced a non-finite displacement field from an input with intensities in [{lo:.3g}, {hi:.3g}]; "
            "scale the images to about [0, 1] first (the bundles' preprocessing does: ScaleIntensityd)."
        )


def prepare_pair_input(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The registration nets' common input step: :func:`check_pair_input` with ``net``'s ``spatial_dims``,
    ``2 * in_channels`` and ``check_values``, then ``x`` at the weights' dtype (float16/64 inputs run at the weights'
    dtype; autocast still applies)."""
    check_pair_input(x, net.spatial_dims, 2 * net.in_channels, type(net).__name__, net.check_values)
    return x.to(next(net.parameters()).dtype)


def encode_pair(encoder, moving: torch.Tensor, fixed: torch.Tensor, *args) -> tuple[list, list]:
    """Run a weight-shared ``encoder`` once over moving and fixed stacked on the batch axis; returns the moving and
    the fixed feature lists."""
    feats = encoder(torch.cat([moving, fixed], dim=0), *args)
    b = moving.shape[0]
    return [f[:b] for f in feats], [f[b:] for f in feats]


def pad_to_multiple(
    x: torch.Tensor, multiple: int | Sequence[int], min_multiples: int = 1
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the end of every spatial axis up to a multiple of ``multiple`` (and at least ``min_multiples`` times
    it); returns ``(padded, original_size)``."""
    spatial = tuple(x.shape[2:])
    mult = [int(multiple)] * len(spatial) if isinstance(multiple, int) else [int(m) for m in multiple]
    target = [max(math.ceil(s / m), min_multiples) * m for s, m in zip(spatial, mult)]
    if list(spatial) == target:
        return x, spatial
    pad: list[int] = []
    for s, t in reversed(list(zip(spatial, target))):
        pad += [0, t - s]
    return F.pad(x, pad), spatial


def crop_spatial(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Keep the first ``size[i]`` voxels of every spatial axis of ``(B, C, *S)`` (or ``(B, C, E, *S)`` via trailing)."""
    n = len(size)
    index = (Ellipsis,) + tuple(slice(0, int(s)) for s in size)
    if x.ndim < n:
        raise ValueError(f"cannot crop a {x.ndim}-D tensor to {n} spatial dims.")
    return x[index]
