"""SR-GNN: S. Wu, Y. Tang, Y. Zhu, L. Wang, X. Xie, T. Tan, "Session-based Recommendation with
Graph Neural Networks", AAAI 2019.

Per sequence a session graph (nodes = items, directed edges between consecutive items, in- and
out-adjacency normalised by degree), one gated-GNN step (a GRU cell whose input is the
aggregated in- and out-messages), then the attention readout: with v_n the last node,
alpha_k = q^T sigmoid(W1 v_n + W2 v_k + c), s_g = sum_k alpha_k v_k, s = W3 [s_g; v_n].
Layer names and the GNN cell follow RecBole's SRGNN.

Batched and vectorised without building sparse graphs: our datasets contain each item at most
once per user (``slim.data.dataset`` rejects duplicate user-item pairs), so the session graph of a
sequence is a chain and the degree-normalised adjacency is the identity shift. One GNN step then
reads the previous item (in-edge) and the next item (out-edge) of each node.

Causality for all-position training (every position t predicts item t+1): the graph of the
prefix ending at t has the same chain, except that node t has no out-edge. With one GNN step,
nodes k < t get exactly the states of the full-sequence graph and node t gets a "last-node"
state computed without the out-message. The readout for every prefix t is computed at once
over a [B, L, L] attention (masked to k <= t). Hence ``steps`` is fixed at 1 (RecBole's default);
the [B, L, L, d] additive-attention tensor also makes long max_len costly, so use max_len ~50.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SRGNN(nn.Module):
    """Sequence encoder: ``(emb [B, L, d], seq [B, L]) -> [B, L, d]`` (causal, see module doc)."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.drop = nn.Dropout(dropout)
        # gated GNN cell (RecBole names)
        self.linear_edge_in = nn.Linear(dim, dim)
        self.linear_edge_out = nn.Linear(dim, dim)
        self.b_iah = nn.Parameter(torch.zeros(dim))
        self.b_oah = nn.Parameter(torch.zeros(dim))
        self.w_ih = nn.Linear(2 * dim, 3 * dim)
        self.w_hh = nn.Linear(dim, 3 * dim)
        # readout
        self.linear_one = nn.Linear(dim, dim)
        self.linear_two = nn.Linear(dim, dim)
        self.linear_three = nn.Linear(dim, 1, bias=False)
        self.linear_transform = nn.Linear(2 * dim, dim)

    def _cell(self, h: torch.Tensor, msg_in: torch.Tensor, msg_out: torch.Tensor) -> torch.Tensor:
        gi = self.w_ih(torch.cat([msg_in + self.b_iah, msg_out + self.b_oah], -1))
        gh = self.w_hh(h)
        i_r, i_i, i_n = gi.chunk(3, -1)
        h_r, h_i, h_n = gh.chunk(3, -1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_i + h_i)
        new = torch.tanh(i_n + reset * h_n)
        return (1 - update) * h + update * new

    def _nodes(self, emb: torch.Tensor, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(state of each node inside a longer prefix, state of each node as the prefix's end)."""
        real = (seq > 0).unsqueeze(-1).to(emb.dtype)  # [B, L, 1]
        h = self.drop(emb) * real
        e_in = self.linear_edge_in(h) * real
        e_out = self.linear_edge_out(h) * real
        msg_in = F.pad(e_in, (0, 0, 1, 0))[:, :-1]  # message from the previous node (0 before the first)
        msg_out = F.pad(e_out, (0, 0, 0, 1))[:, 1:]  # message from the next node
        h_full = self._cell(h, msg_in, msg_out) * real
        h_last = self._cell(h, msg_in, torch.zeros_like(msg_out)) * real
        return h_full, h_last

    def forward_last(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """The readout of the whole sequence only ``[B, d]`` (= ``forward(...)[:, -1]``, O(L) not O(L^2))."""
        h_full, h_last = self._nodes(emb, seq)
        v_n, q1 = h_last[:, -1], self.linear_one(h_last[:, -1])
        earlier = h_full[:, :-1]
        alpha = self.linear_three(torch.sigmoid(q1[:, None, :] + self.linear_two(earlier)))
        alpha = alpha * (seq[:, :-1] > 0).unsqueeze(-1).to(alpha.dtype)
        alpha_self = self.linear_three(torch.sigmoid(q1 + self.linear_two(v_n)))
        s_g = (alpha * earlier).sum(1) + alpha_self * v_n
        return self.linear_transform(torch.cat([s_g, v_n], -1))

    def forward(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        h_full, h_last = self._nodes(emb, seq)

        q1 = self.linear_one(h_last)  # query of prefix t: its last node
        q2_full = self.linear_two(h_full)
        # alpha[b, t, k] for k < t (earlier nodes) and the diagonal (the last node itself)
        alpha = self.linear_three(torch.sigmoid(q1[:, :, None, :] + q2_full[:, None, :, :])).squeeze(-1)
        alpha_self = self.linear_three(torch.sigmoid(q1 + self.linear_two(h_last)))  # [B, L, 1]
        l = seq.shape[1]
        earlier = torch.ones(l, l, dtype=torch.bool, device=seq.device).tril(-1)
        alpha = alpha * (earlier & (seq > 0)[:, None, :]).to(alpha.dtype)
        s_g = alpha @ h_full + alpha_self * h_last
        return self.linear_transform(torch.cat([s_g, h_last], -1))
