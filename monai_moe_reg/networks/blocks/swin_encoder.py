"""TransMorph-style Swin encoder with conv skip features, the backbone of SHMoAReg."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from monai.networks.blocks import Convolution
from monai.networks.blocks.patchembedding import PatchEmbed
from monai.networks.layers.utils import get_pool_layer
from monai.networks.nets.swin_unetr import PatchMerging
from monai.utils import ensure_tuple_rep
from monai_moe_reg.networks.blocks.moa_swin import MoASwinStage
from torch import nn

__all__ = ["SwinRegEncoder"]


class SwinRegEncoder(nn.Module):
    """Swin encoder of one image, configured as TransMorph-small by default, with optional MoA attention.

    Features (fine to coarse): two conv features at full and 1/2 resolution (TransMorph's ``c2``/``c1`` skips:
    a conv on the image and on its 2x average-pooled copy), then one Swin stage output per entry of ``depths`` at
    ``1/patch_size``, ``1/(2 patch_size)``, ... with ``embed_dim * 2**i`` channels, each layer-normalised before it is
    returned and patch-merged (MONAI's :class:`PatchMerging`) before the next stage. SHMoAReg runs one instance on
    the moving and on the fixed image (weight sharing).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one image.
        embed_dim: patch embedding channels (TransMorph-small: 48).
        depths: Swin blocks per stage (TransMorph-small: ``(2, 2, 4, 2)``).
        num_heads: heads per stage (TransMorph-small: ``(4, 4, 4, 4)``); MoA picks this many per token.
        window_size: Swin window (one int or one per dim). TransMorph sizes it to the coarsest token grid,
            e.g. ``(5, 6, 7)`` for 160x192x224 inputs.
        patch_size: patch embedding stride; must be 4 so that the pyramid is 1, 1/2, 1/4, ...
        mlp_ratio: MLP ratio of the Swin blocks.
        conv_channels: channels of the conv features at full and 1/2 resolution (TransMorph-small: 16 and 24).
        use_moa: Mixture of Attention heads in every block (``False``: MONAI's plain Swin attention).
        num_attention_experts: MoA experts per block (default ``2 * heads``).
        sparse_moa: evaluate only the selected MoA heads (default; equal to the dense evaluation, faster).
        qkv_bias: bias on the query/key/value projections (TransMorph-small: ``False``).
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        use_checkpoint: gradient checkpointing in the Swin blocks.

    Shapes:
        ``forward(x, aux=None)``: input ``(B, in_channels, *S)``, ``S`` divisible by :attr:`stride`; output a list of
        ``(B, out_channels[l], *S / 2**l)`` for ``l = 0 .. len(depths) + 1``. With a list ``aux``, every MoA block
        appends its auxiliary dict (gates, balance and z losses) to it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 4, 2),
        num_heads: Sequence[int] = (4, 4, 4, 4),
        window_size: Sequence[int] | int = 4,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        conv_channels: Sequence[int] = (16, 24),
        use_moa: bool = True,
        num_attention_experts: int | None = None,
        sparse_moa: bool = True,
        qkv_bias: bool = False,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if patch_size != 4:
            raise ValueError(
                f"patch_size must be 4 (conv features fill 1 and 1/2, Swin starts at 1/4); got {patch_size}."
            )
        if len(depths) != len(num_heads) or len(depths) < 1:
            raise ValueError(f"depths and num_heads need the same non-zero length, got {depths} and {num_heads}.")
        if len(conv_channels) != 2:
            raise ValueError(f"conv_channels needs two entries (full and 1/2 resolution), got {conv_channels}.")
        self.spatial_dims = spatial_dims
        window = ensure_tuple_rep(window_size, spatial_dims)
        self.stride = patch_size * 2 ** (len(depths) - 1)
        self.out_channels = [int(c) for c in conv_channels] + [embed_dim * 2**i for i in range(len(depths))]

        act = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})
        self.conv_full = Convolution(spatial_dims, in_channels, conv_channels[0], act=act)
        self.pool = get_pool_layer(("avg", {"kernel_size": 2, "stride": 2}), spatial_dims=spatial_dims)
        self.conv_half = Convolution(spatial_dims, in_channels, conv_channels[1], act=act)
        self.patch_embed = PatchEmbed(
            patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dim, spatial_dims=spatial_dims
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.merges = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            self.stages.append(
                MoASwinStage(
                    dim=dim,
                    depth=depth,
                    num_heads=heads,
                    window_size=window,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    mlp_ratio=mlp_ratio,
                    use_checkpoint=use_checkpoint,
                    use_moa=use_moa,
                    num_experts=num_attention_experts,
                    sparse_moa=sparse_moa,
                    qkv_bias=qkv_bias,
                )
            )
            self.norms.append(nn.LayerNorm(dim))
            if i < len(depths) - 1:
                self.merges.append(PatchMerging(dim=dim, spatial_dims=spatial_dims))

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b c ... -> b ... c")

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        return torch.movedim(x, -1, 1)

    def forward(self, x: torch.Tensor, aux: list | None = None) -> list[torch.Tensor]:
        feats = [self.conv_full(x), self.conv_half(self.pool(x))]
        tokens = self.patch_embed(x)
        for i, stage in enumerate(self.stages):
            tokens = stage(tokens.contiguous(), aux)
            feats.append(self._channels_first(self.norms[i](self._channels_last(tokens))))
            if i < len(self.merges):
                tokens = self._channels_first(self.merges[i](self._channels_last(tokens)))
        return feats
