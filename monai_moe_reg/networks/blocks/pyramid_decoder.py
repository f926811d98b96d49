"""Coarse-to-fine warping pyramid decoder shared by SHMoAReg and LLM-Morph."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, Warp
from monai.networks.layers.factories import Conv
from monai_moe_reg.networks.blocks.flow import ResidualFlowComposer, upsample_ddf
from monai_moe_reg.networks.blocks.shmoe import SHMoE
from torch import nn

__all__ = ["PyramidDecoder", "conv_concatenated"]


def conv_concatenated(block: Convolution, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``block(torch.cat(parts, 1))`` for a MONAI :class:`Convolution` (conv, then norm/act), computed as the sum of
    the convolution of each part with its slice of the kernel. Same result and parameters, but the concatenated
    input is never built, so backward keeps only the parts (which other layers keep anyway): at 128^3 the
    full-resolution concatenation alone was 400 MB of a training step. Without autograd (inference) the single
    convolution of the concatenation is used: it is faster there and nothing is kept."""
    conv = block.conv
    training = torch.is_grad_enabled() and any(p.requires_grad for p in [*parts, conv.weight])
    if not training or len(parts) == 1 or not isinstance(conv, (nn.Conv2d, nn.Conv3d)) or conv.groups != 1:
        return block(torch.cat(list(parts), dim=1))
    fn = F.conv3d if isinstance(conv, nn.Conv3d) else F.conv2d
    out, start = None, 0
    for part in parts:
        width = part.shape[1]
        term = fn(part, conv.weight[:, start : start + width], None, conv.stride, conv.padding, conv.dilation)
        out = term if out is None else out + term
        start += width
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, *([1] * (out.ndim - 2)))
    return block.adn(out) if hasattr(block, "adn") else out


class PyramidDecoder(nn.Module):
    """Registration decoder that refines a displacement field from the coarsest level to full resolution (RDP-style).

    Level ``l`` has spatial size ``S / 2**l``; levels are given fine to coarse (index 0 = full resolution). At the
    coarsest level the fixed and moving features are concatenated and a residual is predicted. At every finer level:

    1. the current flow is upsampled x2 and its vectors scaled x2 (:func:`upsample_ddf`);
    2. the moving features of that level are warped with it (MONAI :class:`~monai.networks.blocks.Warp`);
    3. ``[fixed, warped moving, upsampled decoder features, extra]`` go through a conv block; the coarser level's
       decoder features are first reduced to this level's channel count by a 1x1 convolution at the coarse
       resolution, so the upsampling and the concatenation at fine levels move fewer channels (at 128^3 on a CPU the
       full-resolution block was the network's most expensive layer);
    4. a head predicts the residual (a velocity in the diffeomorphic case) and
       :class:`ResidualFlowComposer` composes it: ``flow = warp(flow, w) + w``.

    Heads are :class:`SHMoE` layers at the levels in ``moe_levels`` (SHMoAReg: full and 1/2) and plain
    convolutions elsewhere. ``forward(..., return_aux=True)`` returns ``(ddf, records)``: for each SHMoE level (fine
    to coarse) ``{"level", "gates", "experts", "selection", "prior_ddf"}``: the gate probabilities, the experts'
    predictions (both ``(B, D, E, *s)``), the selected expert per voxel and direction ``(B, D, *s)``, and the flow
    that warped the moving image before this level's residual (``None`` at the coarsest level), for the
    routing-classification loss.

    Args:
        spatial_dims: 2 or 3.
        fixed_channels: feature channels per level (fine to coarse) of the fixed image.
        moving_channels: same for the moving image (default: ``fixed_channels``).
        channels: decoder channels per level (fine to coarse).
        extra_channels: channels of optional extra per-level features (LLM-Morph's adapters), 0 where none.
        moe_levels: levels whose head is an SHMoE layer (() disables SHMoE: the "SHMoE off" ablation).
        moe_kernel_sizes: SHMoE expert kernels.
        moe_gate_mode: SHMoE gradient path to the router, see :class:`SHMoE`.
        diffeomorphic: residuals are velocities integrated by scaling and squaring.
        integration_steps: scaling-and-squaring steps.
        act: activation of the conv blocks (MONAI layer factory name/args).
        norm: normalisation of the conv blocks.
        head_init_std: std of the heads' initial weights (plain and SHMoE experts); 0 gives an exactly zero initial
            DDF (LocalNet's ``out_kernel_initializer="zeros"``).

    Shapes:
        ``forward(fixed_feats, moving_feats, extra_feats=None, return_aux=False)``: lists of ``(B, C_l, *S / 2**l)``;
        returns the DDF ``(B, spatial_dims, *S)`` in voxel units of level 0 (and the records).
    """

    def __init__(
        self,
        spatial_dims: int,
        fixed_channels: Sequence[int],
        channels: Sequence[int],
        moving_channels: Sequence[int] | None = None,
        extra_channels: Sequence[int] | None = None,
        moe_levels: Sequence[int] = (0, 1),
        moe_kernel_sizes: Sequence[int] = (1, 3, 5),
        moe_gate_mode: str = "straight_through",
        diffeomorphic: bool = False,
        integration_steps: int = 7,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
        norm: str | tuple | None = None,
        head_init_std: float = 1e-5,
    ) -> None:
        super().__init__()
        n = len(fixed_channels)
        moving_channels = list(fixed_channels) if moving_channels is None else list(moving_channels)
        extra_channels = [0] * n if extra_channels is None else list(extra_channels)
        if not (len(channels) == len(moving_channels) == len(extra_channels) == n) or n < 1:
            raise ValueError(
                "fixed_channels, moving_channels, extra_channels and channels need one entry per level, got "
                f"{list(fixed_channels)}, {moving_channels}, {extra_channels}, {list(channels)}."
            )
        if any(not 0 <= lv < n for lv in moe_levels):
            raise ValueError(f"moe_levels must index the {n} levels (0 = full resolution), got {tuple(moe_levels)}.")
        self.spatial_dims = spatial_dims
        self.num_levels = n
        self.moe_levels = tuple(sorted({int(lv) for lv in moe_levels}))
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        conv = Conv[Conv.CONV, spatial_dims]
        self.laterals = nn.ModuleList(conv(channels[lv + 1], channels[lv], 1) for lv in range(n - 1))
        for lv in range(n):
            up = channels[lv] if lv + 1 < n else 0
            in_ch = fixed_channels[lv] + moving_channels[lv] + up + extra_channels[lv]
            self.blocks.append(Convolution(spatial_dims, in_ch, channels[lv], act=act, norm=norm))
            if lv in self.moe_levels:
                head = SHMoE(
                    spatial_dims,
                    channels[lv],
                    kernel_sizes=moe_kernel_sizes,
                    gate_mode=moe_gate_mode,
                    init_std=head_init_std,
                )
            else:
                head = conv(channels[lv], spatial_dims, 3, padding=1)
                nn.init.normal_(head.weight, 0.0, head_init_std)
                nn.init.zeros_(head.bias)
            self.heads.append(head)
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.composer = ResidualFlowComposer(spatial_dims, diffeomorphic, integration_steps)

    def forward(
        self,
        fixed_feats: Sequence[torch.Tensor],
        moving_feats: Sequence[torch.Tensor],
        extra_feats: Sequence[torch.Tensor | None] | None = None,
        return_aux: bool = False,
    ):
        if len(fixed_feats) != self.num_levels or len(moving_feats) != self.num_levels:
            raise ValueError(
                f"PyramidDecoder expects {self.num_levels} feature levels, got {len(fixed_feats)} fixed and "
                f"{len(moving_feats)} moving."
            )
        extra_feats = [None] * self.num_levels if extra_feats is None else list(extra_feats)
        flow, dec = None, None
        records = []
        for lv in reversed(range(self.num_levels)):
            fixed, moving = fixed_feats[lv], moving_feats[lv]
            size = fixed.shape[2:]
            if flow is not None:
                flow = upsample_ddf(flow, size)
                moving = self.warp(moving, flow)
            parts = [fixed, moving]
            if dec is not None:
                mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
                parts.append(F.interpolate(self.laterals[lv](dec), size=size, mode=mode, align_corners=False))
            if extra_feats[lv] is not None:
                parts.append(extra_feats[lv])
            dec = conv_concatenated(self.blocks[lv], parts)
            head = self.heads[lv]
            if isinstance(head, SHMoE) and return_aux:
                residual, aux = head(dec, return_aux=True)
                records.append({"level": lv, **aux, "prior_ddf": None if flow is None else flow.detach()})
            else:
                residual = head(dec)
            flow = self.composer(flow, residual)
        return (flow, records[::-1]) if return_aux else flow

    def moe_layers(self) -> list[SHMoE]:
        """The SHMoE heads, fine to coarse."""
        return [self.heads[lv] for lv in self.moe_levels]
