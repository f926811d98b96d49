"""Swin window attention whose relative-position bias is right for clamped windows.

MONAI's :class:`~monai.networks.nets.swin_unetr.WindowAttention` indexes its bias table with the index of the full
window sliced to ``[:n, :n]``. When a stage's token grid is smaller than the window, the window is clamped to the grid
(``get_window_size``) and that slice pairs tokens with the wrong offsets (for a 4^3 window clamped to 2^3, 48 of the
64 entries are wrong). Here the index is built for the window actually used, against the same table, so a clamped
window reads exactly the offsets its tokens have. Written by hand because MONAI's block has the defect; the table,
its initialisation and its state-dict keys are MONAI's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention

__all__ = ["relative_position_index", "SwinWindowAttention"]


def relative_position_index(window: Sequence[int], table_window: Sequence[int]) -> torch.Tensor:
    """Row of the bias table for every (query, key) token pair of a ``window``, ``(N, N)`` with ``N = prod(window)``.

    The table is the one MONAI builds for ``table_window`` (``prod(2 * table_window - 1)`` rows); ``window`` may be
    smaller per axis (a clamped window). For ``window == table_window`` this equals MONAI's
    ``relative_position_index``.
    """
    if len(window) != len(table_window) or any(w > t or w < 1 for w, t in zip(window, table_window)):
        raise ValueError(f"window {tuple(window)} must fit inside the table's window {tuple(table_window)}.")
    # numpy, not torch ops: under torch.jit.trace the index is a constant of the graph, cached or not
    coords = np.stack(np.meshgrid(*[np.arange(int(w)) for w in window], indexing="ij")).reshape(len(window), -1)
    rel = coords[:, :, None] - coords[:, None, :]  # (D, N, N) offsets
    index = np.zeros_like(rel[0])
    for axis, t in enumerate(table_window):
        index = index * (2 * int(t) - 1) + rel[axis] + int(t) - 1
    return torch.as_tensor(index, dtype=torch.long)


class SwinWindowAttention(WindowAttention):
    """MONAI's window attention (same parameters and state-dict keys) with the clamped-window bias fixed and
    ``scaled_dot_product_attention`` in training as well as inference.

    The Swin stage tells the block which window it runs with (:meth:`set_window`, called by
    :class:`~monai_moe_reg.networks.blocks.MoASwinStage` for every forward); without it the full window is assumed.

    Shapes:
        ``forward(x, mask)``: ``x`` is ``(B*nW, N, C)`` window tokens, ``mask`` ``(nW, N, N)`` or ``None``;
        returns ``(B*nW, N, C)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.active_window: tuple[int, ...] = tuple(int(w) for w in self.window_size)
        self._index_cache: dict = {}

    def set_window(self, window: Sequence[int]) -> None:
        """The (possibly clamped) window of the coming forward calls."""
        self.active_window = tuple(int(w) for w in window)

    def position_bias(self, n: int) -> torch.Tensor:
        """Relative-position bias ``(heads, n, n)`` for the active window."""
        window = self.active_window
        if math.prod(window) != n:
            raise RuntimeError(f"{type(self).__name__} got windows of {n} tokens but its active window is {window}.")
        table = self.relative_position_bias_table
        if window == tuple(self.window_size):
            index = self.relative_position_index.reshape(-1)
        elif torch.jit.is_tracing():  # the same constant on every traced call (a cache hit would differ in the graph)
            index = relative_position_index(window, self.window_size).reshape(-1).to(table.device)
        else:
            key = (window, table.device)
            if key not in self._index_cache:
                self._index_cache[key] = relative_position_index(window, self.window_size).reshape(-1).to(table.device)
            index = self._index_cache[key]
        # index_select, not table[index]: the backward of advanced indexing accumulates in a thread-dependent order
        # on the CPU, index_select's (index_add) does not, so training stays bit-reproducible across a resume
        return table.index_select(0, index).reshape(n, n, -1).permute(2, 0, 1)

    @staticmethod
    def attention_bias(bias: torch.Tensor, mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Add the shifted-window ``mask`` ``(nW, N, N)`` to the per-head ``bias`` ``(H, N, N)`` (or ``(B, H, N, N)``)
        -> an additive attention bias broadcastable to ``(batch, H, N, N)``."""
        if mask is None:
            return bias if bias.ndim == 4 else bias.unsqueeze(0)
        nw, n = mask.shape[0], mask.shape[-1]
        heads = bias.shape[-3]
        bias = bias.reshape(-1, nw, heads, n, n) if bias.ndim == 4 else bias.view(1, 1, heads, n, n)
        return (
            (bias + mask.to(bias.dtype).view(1, nw, 1, n, n))
            .expand(batch // nw, nw, heads, n, n)
            .reshape(batch, heads, n, n)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.attention_bias(self.position_bias(n), mask, b)
        drop = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
