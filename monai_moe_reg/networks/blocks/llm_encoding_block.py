"""LLM Encoding Block (LEB) of LLM-Morph and its trainable-ViT ablation."""

from __future__ import annotations

import torch
from monai.networks.blocks import TransformerBlock
from monai_moe_reg.networks.blocks.token_adapter import TokenAdapter
from torch import nn

__all__ = ["LLMEncodingBlock", "ViTEncodingBlock", "LORA_TARGETS"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj")


class LLMEncodingBlock(nn.Module):
    """Adapter0 followed by one pretrained decoder layer of a Hugging Face causal LM, LoRA on q/k/v via peft.

    The decoder layer is called the way transformers >= 4.45 expects when it is used outside its model: rotary
    position embeddings are computed by the model's rotary module for positions ``0..L-1`` and passed in as
    ``position_embeddings=(cos, sin)``. Attention is **bidirectional** by default (image tokens have no order):
    the layer's ``self_attn.is_causal`` is set to ``False`` and no mask is passed, which both the eager and the SDPA
    attention honour. With ``causal=True`` an explicit causal additive mask is passed (so eager attention is causal
    too). transformers 5.x returns a tensor from a decoder layer, 4.x a tuple; both are handled.

    The layer's own weights are frozen (``requires_grad=False``); LoRA adapters (rank ``lora_rank``) are injected
    into ``q_proj``, ``k_proj`` and ``v_proj`` with ``peft.inject_adapter_in_model`` and are the only trainable LLM
    parameters. ``lora_rank=0`` disables LoRA (the paper's "w/o LoRA" ablation).

    The frozen pretrained weights are **not part of** ``state_dict()``: they come from the LLM source the block was
    built from, so checkpoints hold only what training changes (LoRA, adapters), which keeps LLM-Morph's
    ``model.pt`` within the Model Zoo's 25 MB per file. ``load_state_dict(strict=True)`` accepts such checkpoints
    (the frozen weights keep their pretrained values) as well as older ones that include the frozen weights.

    Args:
        in_features: token channels entering Adapter0.
        decoder_layer: a decoder layer (e.g. from :func:`monai_moe_reg.llm.load_decoder_layers`).
        rotary: the model's rotary-embedding module.
        causal: causal instead of bidirectional attention.
        lora_rank: LoRA rank (paper: 64); 0 = no LoRA.
        lora_alpha: LoRA scaling numerator (default = ``lora_rank``).
        lora_dropout: LoRA dropout.

    Shapes:
        ``(B, L, in_features) -> (B, L, hidden_size)``.
    """

    def __init__(
        self,
        in_features: int,
        decoder_layer: nn.Module,
        rotary: nn.Module,
        causal: bool = False,
        lora_rank: int = 64,
        lora_alpha: int | None = None,
        lora_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        attn = getattr(decoder_layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, t) for t in LORA_TARGETS):
            raise ValueError(
                "decoder_layer must be a Hugging Face decoder layer with self_attn.q_proj/k_proj/v_proj "
                f"(LLaMA-style); got {type(decoder_layer).__name__}."
            )
        self.hidden_size = attn.q_proj.in_features
        self.adapter = TokenAdapter(in_features, self.hidden_size)
        for p in decoder_layer.parameters():
            p.requires_grad_(False)
        self.lora_rank = int(lora_rank)
        if self.lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            cfg = LoraConfig(
                r=self.lora_rank,
                lora_alpha=lora_alpha or self.lora_rank,
                lora_dropout=lora_dropout,
                target_modules=list(LORA_TARGETS),
            )
            decoder_layer = inject_adapter_in_model(cfg, decoder_layer)
            for name, p in decoder_layer.named_parameters():
                p.requires_grad_("lora_" in name)
        self.layer = decoder_layer
        self.pretrained_keys = tuple(f"layer.{n}" for n, p in decoder_layer.named_parameters() if not p.requires_grad)
        self.register_state_dict_post_hook(_drop_pretrained)
        self.register_load_state_dict_pre_hook(_keep_pretrained)
        self.rotary = rotary
        self.causal = causal
        self.layer.self_attn.is_causal = causal

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.adapter(tokens)
        b, n, _ = hidden.shape
        position_ids = torch.arange(n, device=hidden.device).unsqueeze(0).expand(b, -1)
        cos, sin = self.rotary(hidden, position_ids)
        mask = None
        if self.causal:
            mask = torch.full((n, n), torch.finfo(hidden.dtype).min, device=hidden.device, dtype=hidden.dtype)
            mask = torch.triu(mask, diagonal=1)[None, None].expand(b, 1, n, n)
        self.layer.self_attn.is_causal = self.causal
        out = self.layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out


def _drop_pretrained(module: LLMEncodingBlock, state_dict: dict, prefix: str, local_metadata) -> None:
    """``state_dict`` post-hook: remove the frozen pretrained weights (they come from the LLM source)."""
    for key in module.pretrained_keys:
        state_dict.pop(prefix + key, None)


def _keep_pretrained(module: LLMEncodingBlock, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: a checkpoint without the frozen weights keeps the loaded pretrained ones."""
    own = dict(module.named_parameters())
    for key in module.pretrained_keys:
        state_dict.setdefault(prefix + key, own[key].detach())


class ViTEncodingBlock(nn.Module):
    """The "LEBs replaced by ViT" ablation: Adapter0 + a trainable MONAI :class:`TransformerBlock` of the same width.

    Args:
        in_features: token channels entering Adapter0.
        hidden_size: width (the replaced LLM's hidden size).
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP width / hidden size.

    Shapes:
        ``(B, L, in_features) -> (B, L, hidden_size)``.
    """

    def __init__(self, in_features: int, hidden_size: int, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}.")
        self.hidden_size = hidden_size
        self.adapter = TokenAdapter(in_features, hidden_size)
        self.block = TransformerBlock(hidden_size, int(hidden_size * mlp_ratio), num_heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.block(self.adapter(tokens))
