"""Mixture of Attention heads (MoA) for Swin window attention.

Written by hand because neither MONAI nor any library we depend on has MoA. Reference: Zhang et al., "Mixture of
Attention Heads: Selecting Attention Heads Per Token", EMNLP 2022 (arXiv:2210.05144); used in SHMoAReg's encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

__all__ = ["MoAWindowAttention"]


class MoAWindowAttention(WindowAttention):
    """Window attention whose heads are a mixture of ``num_experts`` head experts, ``top_k`` picked per token.

    Each head expert ``i`` owns a query projection ``W_q^i`` (``dim -> head_dim``) and an output projection
    ``W_o^i`` (``head_dim -> dim``); the key and value projections are shared by all experts (one ``head_dim`` each),
    as in the MoA reference. A linear router maps every token to ``num_experts`` logits; after a softmax the
    ``top_k`` experts are kept with their (not renormalised) probabilities ``g_i`` and the output is
    ``sum_i g_i * W_o^i(Attention(q_i, K, V))``. The relative position bias (one table column per expert) and the
    shifted-window mask follow MONAI's :class:`~monai.networks.nets.swin_unetr.WindowAttention`, which this class
    extends so that its relative-position index is reused rather than copied.

    Implementation choice: all ``num_experts`` queries are computed densely and the unselected heads are multiplied by
    a zero gate, so the cost is ``num_experts / top_k`` times a standard attention of ``top_k`` heads; the result is
    identical to a sparse evaluation. The per-expert output projections are stored as one
    ``Linear(num_experts * head_dim, dim)`` (column block ``i`` is ``W_o^i``) with a single shared bias.

    After every forward the module keeps ``last_gates`` (``(B*nW, N, num_experts)``, zero for unselected experts),
    ``balance_loss`` (Switch-style load balancing, ``E * sum_e f_e * P_e`` with ``f_e`` the fraction of token slots
    routed to expert ``e`` and ``P_e`` its mean router probability) and ``z_loss`` (mean squared log-sum-exp of the
    router logits). The MoA paper weights them 0.01 and 0.001.

    Args:
        dim: number of token channels ``C``.
        num_heads: heads used per token, i.e. ``top_k`` (the Swin stage's head count).
        window_size: local window size (2 or 3 entries).
        num_experts: number of head experts ``E``; defaults to ``2 * num_heads``.
        head_dim: channels per head; defaults to ``dim // num_heads``.
        qkv_bias: add a learnable bias to the query, key and value projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the output.

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
        self.last_gates: torch.Tensor | None = None
        self.balance_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits ``(..., E)`` and sparse gates ``(..., E)`` holding the top-k probabilities, zeros elsewhere."""
        logits = self.router(x)
        probs = torch.softmax(logits.float(), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_p)
        return logits, gates

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        e, hd = self.num_experts, self.head_dim
        logits, gates = self.route(x)

        q = self.q_proj(x).view(b, n, e, hd).transpose(1, 2) * self.scale  # (b, E, n, hd)
        k, v = self.kv_proj(x).view(b, n, 2, hd).unsqueeze(1).unbind(dim=3)  # each (b, 1, n, hd)
        attn = q @ k.transpose(-2, -1)  # (b, E, n, n)
        bias = self.relative_position_bias_table[self.relative_position_index.clone()[:n, :n].reshape(-1)]
        attn = attn + bias.reshape(n, n, e).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, e, n, n) + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, e, n, n)
        attn = self.attn_drop(torch.softmax(attn, dim=-1)).to(v.dtype)
        heads = (attn @ v) * gates.transpose(1, 2).unsqueeze(-1).to(v.dtype)  # (b, E, n, hd), zero if unselected
        out = self.proj_drop(self.o_proj(heads.transpose(1, 2).reshape(b, n, e * hd)))

        self.last_gates = gates.detach()
        flat_gates, flat_probs = gates.reshape(-1, e), torch.softmax(logits.float(), -1).reshape(-1, e)
        fraction = (flat_gates > 0).float().mean(0) / self.top_k
        self.balance_loss = e * (fraction * flat_probs.mean(0)).sum()
        self.z_loss = torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        return out

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, head_dim={self.head_dim}"

