"""SHMoAReg: dual weight-shared MoA-Swin encoders and an SHMoE warping-pyramid decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.utils import ensure_tuple_rep
from monai_moe_reg.networks.blocks.pyramid_decoder import PyramidDecoder
from monai_moe_reg.networks.blocks.swin_encoder import SwinRegEncoder
from monai_moe_reg.networks.config import record_config
from monai_moe_reg.networks.export import script_at_grid
from monai_moe_reg.networks.utils import (
    check_pair_output,
    crop_spatial,
    encode_pair,
    pad_to_multiple,
    prepare_pair_input,
)
from torch import nn

__all__ = ["SHMoAReg"]


@record_config
class SHMoAReg(nn.Module):
    """SHMoAReg (Zheng et al., 2025): Mixture of Attention heads in a Swin encoder, SHMoE heads in the decoder.

    Composition: one :class:`SwinRegEncoder` (TransMorph-small with MoA attention) applied to the moving and to the
    fixed image (two weight-shared backbones), and a :class:`PyramidDecoder` whose residual heads at full and 1/2
    resolution are :class:`SHMoE` layers. Defaults are the paper's (TransMorph-small backbone, experts with kernels
    1/3/5, top-1 per voxel and direction, MoA with ``E = 2k`` head experts of which the stage's ``k = 4`` heads are
    used per token).

    Choices where the paper is silent (all arguments): window size = the coarsest token grid of ``img_size``
    (TransMorph's rule, ``(4, 4, 4)`` for 128^3); decoder channels; SHMoE gates with a mixture gradient to the
    router; the routing classification targets (see :class:`~monai_moe_reg.losses.RoutingClassificationLoss`).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of *one* image (the input has ``2 * in_channels``: moving then fixed).
        img_size: nominal training size: derives ``window_size`` when that is ``None``, and is the grid of the
            TorchScript form (``torch.jit.script(net)``: traced at ``img_size``, any input size resampled to it; see
            :mod:`monai_moe_reg.networks.export`).
        window_size: Swin window; ``None`` = ``img_size // stride`` per axis (at least 2).
        embed_dim, depths, num_heads, mlp_ratio: Swin backbone (TransMorph-small: 48, (2,2,4,2), (4,4,4,4), 4).
        conv_channels: conv features at full and 1/2 resolution.
        decoder_channels: decoder channels per level, fine to coarse (``len(depths) + 2`` entries);
            default ``(16, 32, 32, 64, 64, 64, ...)``.
        use_moa: MoA attention (``False``: MONAI's plain Swin attention, the "MoA off" ablation).
        num_attention_experts: MoA head experts per block (default ``2 * heads``).
        sparse_moa: evaluate only the selected MoA heads (default; equal to the dense reference, faster).
        qkv_bias: bias on the query/key/value projections (TransMorph-small: ``False``).
        use_shmoe: SHMoE heads at ``moe_levels`` (``False``: plain conv heads, the "SHMoE off" ablation).
        moe_kernel_sizes: SHMoE expert kernels.
        moe_levels: decoder levels with SHMoE heads (0 = full resolution, 1 = 1/2).
        moe_gate_mode: ``"mixture"`` (default: hard top-1 output, mixture gradient to the router; it registered
            slightly better than ``"straight_through"`` in a step-matched run on real brains, see the README),
            ``"straight_through"`` or ``"switch"``, see :class:`SHMoE`.
        diffeomorphic: residuals are stationary velocities integrated with MONAI's ``DVF2DDF`` and composed
            (SHMoAReg_diff).
        integration_steps: scaling-and-squaring steps.
        drop_path_rate: stochastic depth of the Swin blocks, rising linearly to this rate (TransMorph-small: 0.3;
            only active in training).
        use_checkpoint: gradient checkpointing in the Swin blocks (less memory at 128^3 and above).
        flow_init_std: std of the flow heads' initial weights (VoxelMorph's small initialisation); ``0.0`` makes the
            initial DDF exactly zero.
        check_values: refuse non-finite inputs and outputs with a ``ValueError`` (one host sync per forward;
            the bundles' training configs turn it off and check images as they are loaded instead).

    Shapes:
        input ``(B, 2 * in_channels, *S)``: ``torch.cat([moving, fixed], 1)``; any ``S`` (padded to a multiple of
        :attr:`stride` internally). Output: the DDF ``(B, spatial_dims, *S)`` in voxel units, channel ``i`` along
        array axis ``i`` (MONAI ``Warp`` convention): ``Warp()(moving, ddf)`` is aligned with ``fixed``.
        ``net(x, return_aux=True)`` returns ``(ddf, aux)``, the way Hugging Face MoE models return router logits; the
        loss takes ``aux`` explicitly and nothing is kept on the modules between calls. ``aux`` holds:

        - ``"moe"``: per SHMoE layer (fine to coarse) ``{"level", "gates", "experts", "selection", "prior_ddf"}`` on
          the padded grid (see :class:`PyramidDecoder`), for the routing-classification loss;
        - ``"routing"`` / ``"expert_maps"``: the same gate probabilities ``(B, spatial_dims, E, *s)`` and selected
          experts ``(B, spatial_dims, *s)`` cropped to the input's extent at each level;
        - ``"moa_balance"`` / ``"moa_z"``: mean MoA load-balance and router z-loss over all MoA blocks (0 without
          MoA); ``"moa_gates"``: each MoA block's gates ``(B*nW, N, E)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | int = 128,
        window_size: Sequence[int] | int | None = None,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 4, 2),
        num_heads: Sequence[int] = (4, 4, 4, 4),
        mlp_ratio: float = 4.0,
        conv_channels: Sequence[int] = (16, 24),
        decoder_channels: Sequence[int] | None = None,
        use_moa: bool = True,
        num_attention_experts: int | None = None,
        sparse_moa: bool = True,
        qkv_bias: bool = False,
        use_shmoe: bool = True,
        moe_kernel_sizes: Sequence[int] = (1, 3, 5),
        moe_levels: Sequence[int] = (0, 1),
        moe_gate_mode: str = "mixture",
        diffeomorphic: bool = False,
        integration_steps: int = 7,
        drop_path_rate: float = 0.3,
        use_checkpoint: bool = False,
        check_values: bool = True,
        flow_init_std: float = 1e-5,
    ) -> None:
        super().__init__()
        self.check_values = check_values
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stride = 4 * 2 ** (len(depths) - 1)
        self.img_size = ensure_tuple_rep(img_size, spatial_dims)
        if window_size is None:
            window_size = tuple(max(2, math.ceil(s / self.stride)) for s in ensure_tuple_rep(img_size, spatial_dims))
        self.window_size = ensure_tuple_rep(window_size, spatial_dims)
        self.encoder = SwinRegEncoder(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=self.window_size,
            mlp_ratio=mlp_ratio,
            conv_channels=conv_channels,
            use_moa=use_moa,
            num_attention_experts=num_attention_experts,
            sparse_moa=sparse_moa,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
        )
        n_levels = len(self.encoder.out_channels)
        if decoder_channels is None:
            decoder_channels = [16, 32, 32] + [64] * (n_levels - 3)
        decoder_channels = list(decoder_channels)[:n_levels] if len(decoder_channels) >= n_levels else None
        if decoder_channels is None:
            raise ValueError(f"decoder_channels needs {n_levels} entries (levels 1, 1/2, ..., 1/{self.stride}).")
        self.decoder = PyramidDecoder(
            spatial_dims,
            fixed_channels=self.encoder.out_channels,
            channels=decoder_channels,
            moe_levels=tuple(moe_levels) if use_shmoe else (),
            moe_kernel_sizes=moe_kernel_sizes,
            moe_gate_mode=moe_gate_mode,
            diffeomorphic=diffeomorphic,
            integration_steps=integration_steps,
            head_init_std=flow_init_std,
        )
        self.use_moa = use_moa
        self.use_shmoe = use_shmoe
        self.diffeomorphic = diffeomorphic
        self._last_maps: dict = {}  # detached routing of the last forward, for the read-only properties only

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        x_in = x
        x, size = pad_to_multiple(prepare_pair_input(self, x), self.stride)
        moa: list | None = [] if return_aux else None
        moving, fixed = x[:, : self.in_channels], x[:, self.in_channels :]
        moving_feats, fixed_feats = encode_pair(self.encoder, moving, fixed, moa)  # one pass, shared backbone
        ddf, records = self.decoder(fixed_feats, moving_feats, return_aux=True)  # the gates exist anyway
        ddf = crop_spatial(ddf, size)
        if self.check_values:
            check_pair_output(ddf, x_in, type(self).__name__)
        aux = self._aux(records, moa or [], size, ddf)
        self._last_maps = {k: [t.detach() for t in aux[k]] for k in ("routing", "expert_maps")}
        return (ddf, aux) if return_aux else ddf

    def __prepare_scriptable__(self):
        """``torch.jit.script(net)`` (and MONAI's ``ckpt_export``): the network traced at ``img_size`` in a
        :class:`~monai_moe_reg.networks.export.FixedGridExport` that accepts any input size."""
        return script_at_grid(self, self.img_size, self.in_channels, self.spatial_dims)

    @property
    def routing(self) -> list[torch.Tensor]:
        """Read-only convenience: the SHMoE gate probabilities of the last forward (detached), fine to coarse, each
        ``(B, spatial_dims, E, *s)``; empty before the first forward. Losses use ``return_aux=True`` instead."""
        return list(self._last_maps.get("routing", []))

    @property
    def expert_maps(self) -> list[torch.Tensor]:
        """Read-only convenience: the selected expert per voxel and direction of the last forward, each
        ``(B, spatial_dims, *s)``; empty before the first forward."""
        return list(self._last_maps.get("expert_maps", []))

    @staticmethod
    def _aux(records: list[dict], moa: list[dict], size: Sequence[int], ddf: torch.Tensor) -> dict:
        def level_size(level: int) -> tuple[int, ...]:
            return tuple(math.ceil(s / 2**level) for s in size)

        zero = ddf.new_zeros(())
        return {
            "moe": records,
            "routing": [crop_spatial(r["gates"], level_size(r["level"])) for r in records],
            "expert_maps": [crop_spatial(r["selection"], level_size(r["level"])) for r in records],
            "moa_balance": torch.stack([m["balance"] for m in moa]).mean() if moa else zero,
            "moa_z": torch.stack([m["z"] for m in moa]).mean() if moa else zero,
            "moa_gates": [m["gates"] for m in moa],
        }
