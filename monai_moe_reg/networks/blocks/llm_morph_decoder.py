"""LLM-Morph's decoding stage: sub-stages S4 (1/8) to S1 (full resolution), coarse-to-fine deformation fields."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, Warp
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_pool_layer
from monai_moe_reg.networks.blocks.flow import ResidualFlowComposer, upsample_ddf
from monai_moe_reg.networks.blocks.pyramid_decoder import conv_concatenated
from torch import nn

__all__ = ["LLMMorphDecoder"]


class LLMMorphDecoder(nn.Module):
    """The four decoding sub-stages of LLM-Morph (Ma, Wang et al., AAAI 2025, section "Decoding stage").

    Levels are indexed fine to coarse (0 = full resolution, 3 = 1/8). At every stage ``j`` the adapter feature
    ``F_j`` (the LLM tokens restored to that level, absent in the "no LEB" ablation) and the encoder features of the
    moving and fixed images ``Fm_j``, ``Ff_j`` are concatenated and fused by a 3x3 convolution into ``F'_j``:

    - **S4** (1/8): ``F'_4 = conv[F_4, Fm_4, Ff_4]``; no field; ``F'_4`` is upsampled to S3.
    - **S3** (1/4): ``F'_3 = conv[F_3, Fm_3, Ff_3, up(F'_4)]``; a head predicts the initial field ``phi_3``.
    - **S2** (1/2): ``phi_3`` is upsampled (x2 size and vectors) to ``phi3^``, which warps the moving image at half
      resolution (``I_m^2'``); ``F'_2 = conv[F_2, Fm_2, Ff_2, up(F'_3), I_m^2', phi3^]``; its head predicts ``phi_2``,
      combined with ``phi3^`` into the field of this stage.
    - **S1** (full): the same steps with the full-resolution moving image; the result is the final DDF.

    Choices where the paper is silent (all arguments): the fused channels per stage (``channels``); the heads are 3x3
    convolutions with small initial weights (VoxelMorph's initialisation); "combined" is composition
    ``phi = warp(phi^, phi_j) + phi_j`` (:class:`ResidualFlowComposer`, which also gives the diffeomorphic option), not
    addition; the moving image at each level is average-pooled from the input; the fused feature carried to the next
    stage is upsampled linearly.

    Args:
        spatial_dims: 2 or 3.
        feature_channels: encoder channels of one image per level, fine to coarse (at least 4 levels; levels beyond
            the 4th are not used here).
        channels: fused channels of S1, S2, S3, S4 (levels 0..3).
        adapter_channels: adapter feature channels per level 0..3 (0 or ``None`` where there is none).
        image_channels: channels of the moving image warped at S2 and S1.
        diffeomorphic: residual fields are velocities integrated by scaling and squaring.
        integration_steps: scaling-and-squaring steps.
        act, norm: of the fusion convolutions (MONAI layer-factory specs).
        head_init_std: std of the heads' initial weights.

    Shapes:
        ``forward(fixed_feats, moving_feats, moving_image, extra_feats=None)``: features ``(B, C_l, *S / 2**l)``, the
        moving image ``(B, image_channels, *S)``, extras per level 0..3 or ``None``; returns the DDF
        ``(B, spatial_dims, *S)`` in voxel units of level 0.
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: Sequence[int],
        channels: Sequence[int] = (16, 16, 32, 32),
        adapter_channels: Sequence[int] | None = None,
        image_channels: int = 1,
        diffeomorphic: bool = False,
        integration_steps: int = 7,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
        norm: str | tuple | None = None,
        head_init_std: float = 1e-5,
    ) -> None:
        super().__init__()
        if len(feature_channels) < 4 or len(channels) < 4:
            raise ValueError(
                f"LLMMorphDecoder needs features and channels for 4 levels (1 .. 1/8), got {tuple(feature_channels)} "
                f"and {tuple(channels)}."
            )
        adapters = [int(c or 0) for c in (adapter_channels or [0] * 4)][:4]
        self.spatial_dims = spatial_dims
        self.fuse = nn.ModuleList()
        self.heads = nn.ModuleList()
        conv = Conv[Conv.CONV, spatial_dims]
        for lv in range(4):
            in_ch = adapters[lv] + 2 * int(feature_channels[lv])
            if lv < 3:
                in_ch += int(channels[lv + 1])  # the upsampled fused feature of the coarser stage
            if lv < 2:
                in_ch += image_channels + spatial_dims  # the warped moving image and the upsampled field
            self.fuse.append(Convolution(spatial_dims, in_ch, int(channels[lv]), act=act, norm=norm))
            if lv < 3:
                head = conv(int(channels[lv]), spatial_dims, 3, padding=1)
                nn.init.normal_(head.weight, 0.0, head_init_std)
                nn.init.zeros_(head.bias)
                self.heads.append(head)
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.composer = ResidualFlowComposer(spatial_dims, diffeomorphic, integration_steps)

    def _level_image(self, image: torch.Tensor, level: int) -> torch.Tensor:
        if level == 0:
            return image
        k = 2**level
        return get_pool_layer(("avg", {"kernel_size": k, "stride": k}), self.spatial_dims)(image)

    def forward(
        self,
        fixed_feats: Sequence[torch.Tensor],
        moving_feats: Sequence[torch.Tensor],
        moving_image: torch.Tensor,
        extra_feats: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        extra_feats = [None] * 4 if extra_feats is None else list(extra_feats)
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        fused, flow = None, None
        for lv in (3, 2, 1, 0):  # S4, S3, S2, S1
            size = fixed_feats[lv].shape[2:]
            parts = [p for p in (extra_feats[lv], moving_feats[lv], fixed_feats[lv]) if p is not None]
            if fused is not None:
                parts.append(F.interpolate(fused, size=size, mode=mode, align_corners=False))
            if lv < 2:
                flow = upsample_ddf(flow, tuple(size))
                parts += [self.warp(self._level_image(moving_image, lv), flow), flow]
            fused = conv_concatenated(self.fuse[lv], parts)
            if lv < 3:
                flow = self.composer(flow, self.heads[lv](fused))
        return flow
