"""Mixture of Attention heads (MoA) for Swin window attention.

Written by hand because neither MONAI nor any library we depend on has MoA. Reference: Zhang et al., "Mixture of
Attention Heads: Selecting Attention Heads Per Token", EMNLP 2022 (arXiv:2210.05144); used in SHMoAReg's encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai_moe_reg.networks.blocks.window_attention import SwinWindowAttention
from torch import nn

__all__ = ["MoAWindowAttention"]


class MoAWindowAttention(SwinWindowAttention):
    """Window attention whose heads are a mixture of ``num_experts`` head experts, ``top_k`` picked per token.

    Each head expert ``i`` owns a query projection ``W_q^i`` (``dim -> head_dim``) and an output projection
    ``W_o^i`` (``head_dim -> dim``); the key and value projections are shared by all experts (one ``head_dim`` each),
    as in the MoA reference. A linear router maps every token to ``num_experts`` logits; after a softmax the
    ``top_k`` experts are kept with their (not renormalised) probabilities ``g_i`` and the output is
    ``sum_i g_i * W_o^i(Attention(q_i, K, V))``. The relative position bias (one table column per expert, right for
    clamped windows) and the shifted-window mask follow :class:`SwinWindowAttention` (MONAI's table and keys).

    Sparse evaluation (``sparse=True``, default): only the ``top_k`` selected queries of every token are gathered
    (with their experts' bias rows) and attended with ``scaled_dot_product_attention``; the heads are scattered back
    into the expert layout for the output projection. Because K and V are shared, this equals the dense evaluation
    (all ``num_experts`` queries, unselected heads multiplied by a zero gate; ``sparse=False``, kept as the reference)
    at ``top_k / num_experts`` of its attention cost and memory. The per-expert output projections are stored as one
    ``Linear(num_experts * head_dim, dim)`` (column block ``i`` is ``W_o^i``) with a single shared bias.

    Auxiliary results of a forward go to the list given by :meth:`collect_aux` (the Swin stage sets it for one call),
    one dict per call: ``gates`` (``(B*nW, N, num_experts)``, zero for unselected experts), ``balance`` (Switch-style
    load balancing, ``E * sum_e f_e * P_e`` with ``f_e`` the fraction of token slots routed to expert ``e`` and
    ``P_e`` its mean router probability) and ``z`` (mean squared log-sum-exp of the router logits). The MoA paper
    weights the last two 0.01 and 0.001.

    Args:
        dim: number of token channels ``C``.
        num_heads: heads used per token, i.e. ``top_k`` (the Swin stage's head count).
        window_size: local window size (2 or 3 entries).
        num_experts: number of head experts ``E``; defaults to ``2 * num_heads``.
        head_dim: channels per head; defaults to ``dim // num_heads``.
        qkv_bias: add a learnable bias to the query, key and value projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the output.
        sparse: evaluate only the selected heads (default) instead of all experts.

    Shapes:
        ``forward(x, mask)``: ``x`` is ``(B*nW, N, C)`` window tokens, ``mask`` ``(nW, N, N)`` or ``None``;
        returns ``(B*nW, N, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        num_experts: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sparse: bool = True,
    ) -> None:
        num_experts = 2 * num_heads if num_experts is None else int(num_experts)
        if num_heads < 1 or num_experts < num_heads:
            raise ValueError(
                f"MoA needs 1 <= num_heads (top-k) <= num_experts, got num_heads={num_heads}, "
                f"num_experts={num_experts}; pass num_experts >= num_heads (default 2 * num_heads)."
            )
        # the parent builds the relative position bias table with one column per expert and its index
        super().__init__(dim, num_heads=num_experts, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop)
        del self.qkv, self.proj  # replaced by per-expert queries, shared K/V and per-expert outputs
        self.top_k = int(num_heads)
        self.num_experts = num_experts
        self.head_dim = int(head_dim) if head_dim is not None else dim // num_heads
        if self.head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {self.head_dim} (dim={dim}, num_heads={num_heads}).")
        self.scale = self.head_dim**-0.5
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.q_proj = nn.Linear(dim, num_experts * self.head_dim, bias=qkv_bias)
        self.kv_proj = nn.Linear(dim, 2 * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_experts * self.head_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sparse = bool(sparse)
        self._aux_sink: list | None = None

    def collect_aux(self, sink: list | None) -> None:
        """Append each coming forward's auxiliary dict to ``sink`` (``None``: stop collecting)."""
        self._aux_sink = sink

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits and probabilities ``(..., E)`` and the top-k probabilities and expert indices ``(..., k)``."""
        logits = self.router(x)
        probs = torch.softmax(logits.float(), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        return logits, probs, top_p, top_i

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        e, hd, k = self.num_experts, self.head_dim, self.top_k
        logits, probs, top_p, top_i = self.route(x)
        q = self.q_proj(x).view(b, n, e, hd)
        key, value = self.kv_proj(x).view(b, n, 2, 1, hd).transpose(1, 3).unbind(dim=2)  # each (b, 1, n, hd)
        bias = self.position_bias(n)  # (E, n, n)
        drop = self.attn_drop.p if self.training else 0.0
        if self.sparse:
            # selection as one-hot matmuls (E is small): their backward is a plain reduction, so training stays
            # bit-reproducible and a resumed run equals an uninterrupted one (tested in tests/test_bundles.py)
            pick = F.one_hot(top_i, e).to(q.dtype)  # (b, n, k, E)
            q = torch.einsum("bnke,bneh->bknh", pick, q)  # the selected queries of every token
            rows = torch.einsum("bnke,enm->bknm", pick.to(bias.dtype), bias)  # their experts' bias rows
            attn_bias = self.attention_bias(rows, mask, b)
            heads = F.scaled_dot_product_attention(
                q,
                key.expand(b, k, n, hd),
                value.expand(b, k, n, hd),
                attn_mask=attn_bias.to(q.dtype),
                dropout_p=drop,
                scale=self.scale,
            )
            heads = heads * top_p.transpose(1, 2).unsqueeze(-1).to(heads.dtype)  # (b, k, n, hd)
            heads = torch.einsum("bnke,bknh->bneh", pick.to(heads.dtype), heads)  # back to the expert layout
        else:
            gates = torch.zeros_like(probs).scatter(-1, top_i, top_p)
            attn_bias = self.attention_bias(bias, mask, b)
            heads = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                key.expand(b, e, n, hd),
                value.expand(b, e, n, hd),
                attn_mask=attn_bias.to(q.dtype),
                dropout_p=drop,
                scale=self.scale,
            )
            heads = heads.transpose(1, 2) * gates.unsqueeze(-1).to(heads.dtype)  # zero where unselected
        out = self.proj_drop(self.o_proj(heads.reshape(b, n, e * hd)))
        if self._aux_sink is not None:
            flat_probs = probs.reshape(-1, e)
            fraction = torch.zeros_like(flat_probs).scatter(-1, top_i.reshape(-1, k), 1.0).mean(0) / k
            self._aux_sink.append(
                {
                    "gates": torch.zeros_like(probs).scatter(-1, top_i, top_p).detach(),
                    "balance": e * (fraction * flat_probs.mean(0)).sum(),
                    "z": torch.logsumexp(logits.float(), dim=-1).pow(2).mean(),
                }
            )
        return out

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, head_dim={self.head_dim}, sparse={self.sparse}"
