"""Adapter0 of LLM-Morph: token projections to and from an LLM's hidden size."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenAdapter"]


class TokenAdapter(nn.Module):
    """Two linear projections, each followed by instance normalisation and LeakyReLU (LLM-Morph's Adapter0).

    Instance normalisation normalises every channel over the ``L`` tokens of one sample (``nn.InstanceNorm1d`` on
    ``(B, C, L)``), matching the paper's description. The paper is silent on the last activation; by default it is
    kept (``final_activation=True``) as written ("two linear projections equipped with IN and LeakyReLU").

    Args:
        in_features: token channels in.
        out_features: token channels out (the LLM's hidden size).
        hidden_features: width of the first projection (default ``out_features``).
        negative_slope: LeakyReLU slope.
        final_activation: apply norm + LeakyReLU after the second projection too.

    Shapes:
        ``(B, L, in_features) -> (B, L, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | None = None,
        negative_slope: float = 0.2,
        final_activation: bool = True,
    ) -> None:
        super().__init__()
        hidden = hidden_features or out_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.norm1 = nn.InstanceNorm1d(hidden, affine=True)
        self.fc2 = nn.Linear(hidden, out_features)
        self.norm2 = nn.InstanceNorm1d(out_features, affine=True) if final_activation else None
        self.act = nn.LeakyReLU(negative_slope)

    def _norm_act(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        if x.shape[1] > 1:  # instance norm over tokens needs more than one token
            x = norm(x.transpose(1, 2)).transpose(1, 2)
        return self.act(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._norm_act(self.fc1(x), self.norm1)
        x = self.fc2(x)
        return self._norm_act(x, self.norm2) if self.norm2 is not None else x
