"""GRU4Rec: B. Hidasi, A. Karatzoglou, L. Baltrunas, D. Tikk, "Session-based Recommendations
with Recurrent Neural Networks", ICLR 2016.

A GRU over the item-embedding sequence; the hidden state after item t is the user state that
predicts item t+1. As in RecBole's GRU4Rec: embedding dropout, a GRU, a linear layer back to the
item dimension. We train it SASRec-style (every position of one padded sequence per user, BCE
with one sampled negative) instead of the paper's session-parallel mini-batches with ranking
losses, so all three backbones share one training loop. Left padding feeds zero vectors before the
first item; the GRU turns them into a learned, length-dependent initial state, which is causal.
"""
from __future__ import annotations

import torch
from torch import nn


class GRU4Rec(nn.Module):
    """Sequence encoder: ``(emb [B, L, d], seq [B, L]) -> [B, L, d]`` (causal by construction)."""

    def __init__(self, dim: int, layers: int = 1, dropout: float = 0.2, hidden: int | None = None):
        super().__init__()
        self.dim = dim
        hidden = hidden or dim
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True, bias=False)
        self.dense = nn.Linear(hidden, dim)

    def forward(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.drop(emb))
        return self.dense(out)
