"""A Swin Transformer stage whose window attention is a Mixture of Attention heads (SHMoAReg encoder stage)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import BasicLayer, get_window_size
from monai_moe_reg.networks.blocks.moa_attention import MoAWindowAttention
from monai_moe_reg.networks.blocks.window_attention import SwinWindowAttention
from torch import nn

__all__ = ["MoASwinStage"]


class MoASwinStage(BasicLayer):
    """MONAI's Swin :class:`~monai.networks.nets.swin_unetr.BasicLayer` with MoA attention in every block.

    The stage is MONAI's own (alternating regular / shifted windows, the shift mask, MLP, drop path); only each
    ``SwinTransformerBlock.attn`` is replaced: by :class:`MoAWindowAttention` when ``use_moa`` is true, else by
    :class:`SwinWindowAttention` (MONAI's attention with the same weights, its clamped-window bias fixed: the "MoA
    off" ablation). Every forward tells the blocks the window it runs with (clamped to the token grid).

    Args:
        dim: token channels ``C``.
        depth: number of Swin blocks.
        num_heads: heads per token (MoA top-k).
        window_size: window size, one entry per spatial dimension.
        drop_path: stochastic depth rate, a float or one value per block.
        mlp_ratio: MLP hidden size / ``dim``.
        qkv_bias: bias on the query/key/value projections.
        drop: dropout rate.
        attn_drop: attention dropout rate.
        norm_layer: normalisation layer class.
        downsample: MONAI patch-merging class applied at the end, or ``None``.
        use_checkpoint: gradient checkpointing.
        use_moa: use Mixture of Attention heads (otherwise plain Swin multi-head attention).
        num_experts: MoA head experts ``E``; defaults to ``2 * num_heads``.
        sparse_moa: evaluate only the selected MoA heads (see :class:`MoAWindowAttention`).

    Shapes:
        ``forward(x, aux=None)``: input ``(B, C, *S)`` with 2 or 3 spatial dims; output ``(B, C, *S)`` (or merged when
        ``downsample`` is set). With a list ``aux``, every MoA block appends its auxiliary dict to it.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        drop_path: float | list[float] = 0.0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_layer: type[nn.LayerNorm] = nn.LayerNorm,
        downsample: type[nn.Module] | None = None,
        use_checkpoint: bool = False,
        use_moa: bool = True,
        num_experts: int | None = None,
        sparse_moa: bool = True,
    ) -> None:
        dpr = list(drop_path) if isinstance(drop_path, (list, tuple)) else [float(drop_path)] * depth
        super().__init__(
            dim=dim,
            depth=depth,
            num_heads=num_heads,
            window_size=tuple(window_size),
            drop_path=dpr,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop,
            attn_drop=attn_drop,
            norm_layer=norm_layer,
            downsample=downsample,
            use_checkpoint=use_checkpoint,
        )
        self.use_moa = use_moa
        for blk in self.blocks:
            if use_moa:
                blk.attn = MoAWindowAttention(
                    dim,
                    num_heads=num_heads,
                    window_size=tuple(window_size),
                    num_experts=num_experts,
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop,
                    proj_drop=drop,
                    sparse=sparse_moa,
                )
            else:
                blk.attn = SwinWindowAttention(
                    dim,
                    num_heads=num_heads,
                    window_size=tuple(window_size),
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop,
                    proj_drop=drop,
                )

    def forward(self, x: torch.Tensor, aux: list | None = None) -> torch.Tensor:
        window, _ = get_window_size(tuple(x.shape[2:]), self.window_size, self.shift_size)
        moa = [blk.attn for blk in self.blocks if isinstance(blk.attn, MoAWindowAttention)]
        for blk in self.blocks:
            blk.attn.set_window(window)
        for attn in moa:
            attn.collect_aux(aux)
        try:
            return super().forward(x)
        finally:  # gradient checkpointing recomputes in backward: nothing is appended then
            for attn in moa:
                attn.collect_aux(None)
