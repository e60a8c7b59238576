"""SASRec: W.-C. Kang and J. McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Causal multi-head self-attention over the (left-padded) item sequence with learned positional
embeddings, pre-layer-norm blocks with a point-wise feed-forward net, as in the authors' code
(and its PyTorch port by pmixer that reproduces the paper): each block is
``Q = LN(x); x = Q + MHA(Q, x, x); x = FFN(LN(x)) + LN(x)``, padding positions zeroed after each
block, a final layer norm. Input embeddings are scaled by sqrt(d) before adding positions.
One deviation for speed: attention uses ``F.scaled_dot_product_attention`` with a boolean mask
that is causal AND hides padding keys (each position may always see itself, so no row is empty).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.ln_attn = nn.LayerNorm(dim, eps=1e-8)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q_in = self.ln_attn(x)
        # SASRec: queries are normalised, keys/values are the raw sequence
        wq, wk, wv = self.qkv.weight.chunk(3)
        bq, bk, bv = self.qkv.bias.chunk(3)
        split = lambda t: t.view(b, l, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(F.linear(q_in, wq, bq)), split(F.linear(x, wk, bk)), split(F.linear(x, wv, bv))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = q_in + self.out(a.transpose(1, 2).reshape(b, l, d))
        y = self.ln_ffn(x)
        return y + self.ffn(y)


class SASRec(nn.Module):
    """Sequence encoder: ``(emb [B, L, d], seq [B, L]) -> [B, L, d]`` (causal)."""

    def __init__(self, dim: int, max_len: int, layers: int = 2, heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim, eps=1e-8)

    def forward(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        b, l = seq.shape
        if l > self.max_len:
            raise ValueError(f"sequence length {l} > max_len {self.max_len}")
        keep = (seq > 0).unsqueeze(-1).to(emb.dtype)
        # positions count from the right edge so the newest item always has the same position
        pos = torch.arange(self.max_len - l, self.max_len, device=seq.device)
        x = self.drop(emb * math.sqrt(self.dim) + self.pos(pos)) * keep
        causal = torch.ones(l, l, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(l, dtype=torch.bool, device=seq.device)
        mask = ((causal & (seq > 0)[:, None, :]) | eye)[:, None]  # [B, 1, L, L]
        for blk in self.blocks:
            x = blk(x, mask) * keep
        return self.ln_out(x)
