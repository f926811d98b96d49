"""LLM-Morph: DualPyramid encoder, LLM Encoding Blocks on the 1/16 tokens, decoder adapters, stages S4..S1."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_pool_layer
from monai.utils import ensure_tuple_rep
from monai_moe_reg.llm.loading import LoadedLayers, llm_provenance, load_decoder_layers
from monai_moe_reg.networks.blocks.decoder_adapter import DecoderAdapter, volume_to_tokens
from monai_moe_reg.networks.blocks.dual_pyramid_encoder import DualPyramidEncoder
from monai_moe_reg.networks.blocks.flow import upsample_ddf
from monai_moe_reg.networks.blocks.llm_encoding_block import LLMEncodingBlock, ViTEncodingBlock
from monai_moe_reg.networks.blocks.llm_morph_decoder import LLMMorphDecoder
from monai_moe_reg.networks.blocks.pyramid_cnn_encoder import PyramidCNNEncoder
from monai_moe_reg.networks.blocks.pyramid_decoder import PyramidDecoder
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

__all__ = ["LLMMorph"]

LEB_TYPES = ("llm", "vit")
DESIGNS = ("paper", "pyramid")


@record_config
class LLMMorph(nn.Module):
    """LLM-Morph (Ma, Wang et al., AAAI 2025) for multimodal deformable registration.

    Composition (``design="paper"``, default): one weight-shared :class:`DualPyramidEncoder` (Dual-PRNet's bottom-up
    and top-down pathways) encodes each image into features at 1 .. 1/16; the concatenated 1/16 features are tokenised
    (one token per voxel, ``L = d*h*w``) and passed through ``num_lebs`` :class:`LLMEncodingBlock` s (each an
    Adapter0 + one pretrained decoder layer with LoRA on q/k/v); four :class:`DecoderAdapter` s map the LLM tokens
    to features at 1/8, 1/4, 1/2 and full resolution (``adapter_channels`` x 4 per stage, pixel-shuffled); the
    :class:`LLMMorphDecoder` fuses them with the encoder features in the paper's stages S4 .. S1 (fields from 1/4 to
    full resolution, the moving image warped at 1/2 and full resolution).

    ``design="pyramid"`` is this project's earlier design, kept for step-matched comparisons: a plain strided
    :class:`PyramidCNNEncoder` per image (unshared unless ``share_encoder``) and the shared warping
    :class:`PyramidDecoder` (flows at every level from 1/16, warped moving features).

    Choices where the paper is silent (arguments): decoder channels; bidirectional attention; Adapter0 keeps its
    final activation; the choices of :class:`LLMMorphDecoder`.

    Args:
        llm: a local Hugging Face model folder, a ``.gguf`` file, a hub id, or an already loaded
            :class:`~monai_moe_reg.llm.LoadedLayers`. ``None`` is allowed only with ``leb_type="vit"`` or
            ``num_lebs=0`` (ablations); it never silently means random LLM weights.
        llm_layers: 0-based decoder-layer indices, one per LEB (paper: LLaMA-3-8B ``(15, 16)``); the first
            ``num_lebs`` are used.
        num_lebs: 0, 1 or 2 LLM Encoding Blocks (0 also removes the decoder adapters: ablation 1).
        leb_type: ``"llm"`` (pretrained layers) or ``"vit"`` (trainable MONAI ViT blocks of width ``hidden_size``:
            ablation 2).
        lora_rank: LoRA rank on q/k/v (paper 64); 0 disables LoRA (ablation 4).
        causal: causal instead of bidirectional attention in the LLM layers.
        hidden_size: ViT width when ``leb_type="vit"`` (default: the LLM's hidden size when one is given, else 576).
        vit_heads: ViT heads.
        spatial_dims: 2 or 3.
        in_channels: channels of one image.
        encoder_channels: CNN pyramid channels, fine to coarse (5 levels = 1 .. 1/16).
        share_encoder: one encoder for moving and fixed (weight sharing, the paper's DualPyramid) instead of two;
            default: ``True`` for ``design="paper"``, ``False`` for ``"pyramid"``.
        decoder_channels: decoder channels per level, fine to coarse (5 entries; the paper design's stages S1 .. S4
            use the first four).
        adapter_channels: ``C4`` of the first decoder adapter (paper 256); later adapters x4.
        half_resolution: the paper's half-resolution strategy: the pair is average-pooled x2, registered, and the DDF
            upsampled (x2 size and vectors) to the input size, so full-size labels can be warped.
        diffeomorphic: integrate residual velocities (not in the paper; shared pyramid option).
        llm_dtype: dtype of the loaded LLM weights.
        flow_init_std: std of the flow heads' initial weights; ``0.0`` makes the initial DDF exactly zero.
        design: ``"paper"`` (DualPyramid encoder, decoding stages S4 .. S1) or ``"pyramid"`` (earlier design).
        export_size: grid of the TorchScript form (``torch.jit.script(net)``: traced at this size, any input size
            resampled to it; see :mod:`monai_moe_reg.networks.export`).
        check_values: refuse non-finite inputs and outputs with a ``ValueError`` (one host sync per forward;
            the bundles' training configs turn it off and check images as they are loaded instead).

    Shapes:
        ``net(torch.cat([moving, fixed], 1))``: ``(B, 2 * in_channels, *S) -> (B, spatial_dims, *S)``, voxel units;
        any ``S`` (padded to a multiple of :attr:`stride`, at least ``2 * stride``, and cropped back).
    """

    def __init__(
        self,
        llm: str | os.PathLike | LoadedLayers | None = None,
        llm_layers: Sequence[int] = (15, 16),
        num_lebs: int = 2,
        leb_type: str = "llm",
        lora_rank: int = 64,
        causal: bool = False,
        hidden_size: int | None = None,
        vit_heads: int = 8,
        spatial_dims: int = 3,
        in_channels: int = 1,
        encoder_channels: Sequence[int] = (16, 32, 32, 64, 64),
        share_encoder: bool | None = None,
        decoder_channels: Sequence[int] = (16, 16, 32, 32, 64),
        adapter_channels: int = 256,
        half_resolution: bool = False,
        diffeomorphic: bool = False,
        llm_dtype: torch.dtype = torch.float32,
        check_values: bool = True,
        design: str = "paper",
        flow_init_std: float = 1e-5,
        export_size: Sequence[int] | int = 128,
    ) -> None:
        super().__init__()
        self.check_values = check_values
        self.export_size = ensure_tuple_rep(export_size, spatial_dims)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_lebs not in (0, 1, 2):
            raise ValueError(f"num_lebs must be 0, 1 or 2 (paper Table 2), got {num_lebs}.")
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {design!r}.")
        if leb_type not in LEB_TYPES:
            raise ValueError(f"leb_type must be one of {LEB_TYPES}, got {leb_type!r}.")
        if len(encoder_channels) != 5 or len(decoder_channels) != 5:
            raise ValueError("encoder_channels and decoder_channels need 5 entries (levels 1, 1/2, 1/4, 1/8, 1/16).")
        min_c4 = 2 ** (4 * spatial_dims - 6)  # full-resolution adapter: C4 * 4**3 / 16**D channels
        if adapter_channels < min_c4 or adapter_channels % min_c4:
            raise ValueError(
                f"adapter_channels (C4) must be a positive multiple of {min_c4} for spatial_dims={spatial_dims} so every "
                f"pixel-shuffled adapter keeps >= 1 channel (paper: 256), got {adapter_channels}."
            )
        if llm is None and leb_type == "llm" and num_lebs > 0:
            raise ValueError(
                "LLMMorph(llm=None) needs an explicit ablation: leb_type='vit' (trainable ViT blocks) or num_lebs=0. "
                "Pass llm=<model folder | .gguf file | hub id>; get SmolLM2 with: python -m monai_moe_reg.llm.fetch"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.half_resolution = half_resolution
        self.stride = 2 ** (len(encoder_channels) - 1) * (2 if half_resolution else 1)
        self.design = design
        self.share_encoder = (design == "paper") if share_encoder is None else bool(share_encoder)
        encoder = DualPyramidEncoder if design == "paper" else PyramidCNNEncoder
        self.encoder_moving = encoder(spatial_dims, in_channels, encoder_channels)
        self.encoder_fixed = None if self.share_encoder else encoder(spatial_dims, in_channels, encoder_channels)
        token_features = 2 * encoder_channels[-1]
        self.llm_source = None
        self.llm_provenance = None
        self.lebs = nn.ModuleList()
        if num_lebs > 0:
            if leb_type == "llm":
                if len(llm_layers) < num_lebs:
                    raise ValueError(
                        f"llm_layers needs {num_lebs} indices for {num_lebs} LEBs, got {tuple(llm_layers)}."
                    )
                loaded = (
                    llm
                    if isinstance(llm, LoadedLayers)
                    else load_decoder_layers(llm, tuple(llm_layers)[:num_lebs], dtype=llm_dtype)
                )
                if len(loaded.layers) < num_lebs:
                    raise ValueError(f"{num_lebs} LEBs need {num_lebs} loaded layers, got {len(loaded.layers)}.")
                self.llm_source = loaded.source
                self.llm_provenance = llm_provenance(loaded)  # recorded with the weights, checked on load
                width = int(loaded.config.hidden_size)
                for i in range(num_lebs):
                    self.lebs.append(
                        LLMEncodingBlock(
                            token_features if i == 0 else width,
                            loaded.layers[i],
                            loaded.rotary,
                            causal=causal,
                            lora_rank=lora_rank,
                        )
                    )
            else:
                width = int(hidden_size or 576)
                for i in range(num_lebs):
                    self.lebs.append(ViTEncodingBlock(token_features if i == 0 else width, width, vit_heads))
            # adapters for levels 3, 2, 1, 0 (1/8 .. full): C4 * 4**k channels, pixel shuffle by 2**(k+1)
            self.decoder_adapters = nn.ModuleList(
                DecoderAdapter(spatial_dims, width, adapter_channels * 4**k, 2 ** (k + 1)) for k in range(4)
            )
            extra = [a.out_channels for a in reversed(self.decoder_adapters)] + [0]
        else:
            self.decoder_adapters = nn.ModuleList()
            extra = None
        if design == "paper":
            self.decoder = LLMMorphDecoder(
                spatial_dims,
                feature_channels=encoder_channels,
                channels=tuple(decoder_channels)[:4],
                adapter_channels=None if extra is None else extra[:4],
                image_channels=in_channels,
                diffeomorphic=diffeomorphic,
                head_init_std=flow_init_std,
            )
        else:
            self.decoder = PyramidDecoder(
                spatial_dims,
                fixed_channels=encoder_channels,
                channels=decoder_channels,
                extra_channels=extra,
                moe_levels=(),
                diffeomorphic=diffeomorphic,
                head_init_std=flow_init_std,
            )
        if half_resolution:
            self.pool = get_pool_layer(("avg", {"kernel_size": 2, "stride": 2}), spatial_dims=spatial_dims)

    def __prepare_scriptable__(self):
        """``torch.jit.script(net)`` (and MONAI's ``ckpt_export``): the network traced at ``export_size`` in a
        :class:`~monai_moe_reg.networks.export.FixedGridExport` that accepts any input size."""
        return script_at_grid(self, self.export_size, self.in_channels, self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x
        x, size = pad_to_multiple(
            prepare_pair_input(self, x), self.stride, min_multiples=2
        )  # instance norm needs > 1 voxel at 1/16
        padded = x.shape[2:]
        if self.half_resolution:
            x = self.pool(x)
        moving, fixed = x[:, : self.in_channels], x[:, self.in_channels :]
        if self.encoder_fixed is None:  # weight-shared streams: one pass over both images
            moving_feats, fixed_feats = encode_pair(self.encoder_moving, moving, fixed)
        else:
            moving_feats, fixed_feats = self.encoder_moving(moving), self.encoder_fixed(fixed)
        extra = None
        if len(self.lebs) > 0:
            grid = tuple(fixed_feats[-1].shape[2:])
            tokens = volume_to_tokens(torch.cat([moving_feats[-1], fixed_feats[-1]], dim=1))
            for leb in self.lebs:
                tokens = leb(tokens)
            extra = [adapter(tokens, grid) for adapter in reversed(self.decoder_adapters)] + [None]
            extra = [e.to(f.dtype) if e is not None else None for e, f in zip(extra, fixed_feats)]
        if self.design == "paper":
            ddf = self.decoder(fixed_feats, moving_feats, moving, None if extra is None else extra[:4])
        else:
            ddf = self.decoder(fixed_feats, moving_feats, extra)
        if self.half_resolution:
            ddf = upsample_ddf(ddf, tuple(padded))
        ddf = crop_spatial(ddf, size)
        if self.check_values:
            check_pair_output(ddf, x_in, type(self).__name__)
        return ddf
