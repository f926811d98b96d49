"""Shared pieces of the registration engines: batch handling, autocast, DDF prediction at a network size."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.networks.blocks import Warp
from monai_moe_reg.data.datalist import PAIR_KEYS
from monai_moe_reg.networks.blocks.flow import upsample_ddf
from torch import nn

__all__ = ["pair_to_device", "autocast", "unwrap", "predict_ddf", "has_aux", "image_spacing", "warp_pair"]


def pair_to_device(batch: dict, device: torch.device | str, non_blocking: bool = False) -> dict:
    """The pair keys of a collated batch moved to ``device`` (other keys, e.g. file names, untouched)."""
    out = dict(batch)
    for key in PAIR_KEYS:
        if key in batch and isinstance(batch[key], torch.Tensor):
            out[key] = batch[key].to(device, non_blocking=non_blocking)
    return out


def autocast(device: torch.device | str, enabled: bool):
    """bf16 autocast on CPU, fp16 on CUDA, or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16 if dev == "cpu" else torch.float16)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return getattr(network, "module", network)


def predict_ddf(
    network: nn.Module,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    network_size: Sequence[int] | None = None,
    inferer=None,
    return_aux: bool = False,
):
    """DDF ``(B, D, *S_fixed)`` in voxels of the fixed grid; with ``network_size`` the pair is resized to it
    (linear), registered, and the DDF resized back with its vectors rescaled per axis. With ``return_aux`` returns
    ``(ddf, aux)``: the network's auxiliary outputs when it has them (``forward(x, return_aux=True)``), else ``None``.
    """
    x = torch.cat([moving, fixed], dim=1)
    x = x.as_tensor() if isinstance(x, MetaTensor) else x  # plain tensor: no meta-data tracking inside the network
    size = tuple(x.shape[2:])
    if network_size is not None and tuple(network_size) != size:
        mode = "trilinear" if x.ndim == 5 else "bilinear"
        x = F.interpolate(x, size=tuple(network_size), mode=mode, align_corners=False)
    kwargs = {"return_aux": True} if return_aux and has_aux(network) else {}
    out = inferer(x, network, **kwargs) if inferer is not None else network(x, **kwargs)
    ddf, aux = out if kwargs else (out, None)
    if tuple(ddf.shape[2:]) != size:
        ddf = upsample_ddf(ddf.float(), size)
    return (ddf, aux) if return_aux else ddf


def has_aux(network: nn.Module) -> bool:
    """Whether ``network`` (or the module a DDP wrapper holds) takes ``return_aux``."""
    import inspect

    return "return_aux" in inspect.signature(unwrap(network).forward).parameters


def image_spacing(image: torch.Tensor) -> list[float] | None:
    """Voxel spacing (mm) of a MetaTensor from its affine (the first item's if batched); ``None`` for a plain tensor."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    affine = torch.as_tensor(affine)
    affine = affine[0] if affine.ndim == 3 else affine
    return [float(v) for v in affine_to_spacing(affine, r=affine.shape[-1] - 1)]


def warp_pair(
    ddf: torch.Tensor,
    moving: torch.Tensor,
    moving_label: torch.Tensor | None = None,
    aux: dict | None = None,
    network_size: Sequence[int] | None = None,
) -> dict:
    """What a registered pair produces on the fixed grid: ``warped_image`` (linear), ``warped_label`` (nearest, the
    label map itself, when given) and ``expert_maps`` (SHMoAReg's level-0 selected-expert map ``(B, D, *S)`` from the
    network's ``aux`` when it ran on the fixed grid, else ``None``). Used by the evaluator."""

    def plain(t: torch.Tensor) -> torch.Tensor:
        t = t.as_tensor() if isinstance(t, MetaTensor) else t
        return t.float().to(ddf.device)

    out = {"warped_image": Warp(mode="bilinear", padding_mode="zeros")(plain(moving), ddf)}
    if moving_label is not None:
        out["warped_label"] = Warp(mode="nearest", padding_mode="zeros")(plain(moving_label), ddf)
    maps = (aux or {}).get("expert_maps")
    out["expert_maps"] = maps[0] if maps and not network_size else None
    return out
