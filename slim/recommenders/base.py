"""What every ID-based recommender here is made of: an item encoder, a sequence encoder, a score.

The paper's backbone (section 2.1): z_i = ItemEncoder(i, a_i); s_u = SeqEncoder(z_{i_1..i_t});
score = dot(s_u, z_i). We keep those three pieces as separate modules so the SLIM fusion
(``fusion.py``) can replace the item encoder and post-process the sequence encoder's output
without any backbone knowing about text.

Conventions shared by all backbones:
- sequences are LEFT-padded with item 0 to a fixed length L, so the newest item is always at
  position L-1 and "the user representation" is the hidden state at the last position;
- a backbone maps ``(item vectors [B, L, d], item ids [B, L]) -> hidden [B, L, d]`` and must be
  causal: the output at position t depends only on items at positions <= t (every position is
  trained to predict the next item, as in SASRec);
- the item table row 0 (padding) is all zeros.
"""
from __future__ import annotations

import torch
from torch import nn


class IDItemEncoder(nn.Module):
    """Plain ID embedding (the backbone "X"): z_i = E[i]."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.n_items, self.dim = n_items, dim
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=dim**-0.5)
        with torch.no_grad():
            self.emb.weight[0].zero_()

    def table(self) -> torch.Tensor:
        """All item vectors ``[n_items + 1, d]`` (row 0 = padding = zeros)."""
        return self.emb.weight


class SeqRecModel(nn.Module):
    """item encoder + sequence encoder (+ optional user-side fusion) -> scores over all items.

    ``user_fusion`` (or None) maps ``(hidden [B, L, d], user_vec [B, D]) -> [B, L, d]``; it is
    how SLIM's rationale vector enters without the backbone changing.
    """

    def __init__(self, item_encoder: nn.Module, backbone: nn.Module, user_fusion: nn.Module | None = None):
        super().__init__()
        self.item_encoder = item_encoder
        self.backbone = backbone
        self.user_fusion = user_fusion

    @property
    def needs_user_text(self) -> bool:
        return self.user_fusion is not None

    def hidden(
        self, seq: torch.Tensor, user_vec: torch.Tensor | None = None, table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """User representation at every position ``[B, L, d]``."""
        table = self.item_encoder.table() if table is None else table
        h = self.backbone(table[seq], seq)
        if self.user_fusion is not None:
            if user_vec is None:
                raise ValueError("this model fuses a user rationale vector: pass user_vec")
            h = self.user_fusion(h, user_vec)
        return h

    def pair_logits(
        self, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, user_vec: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training logits: dot(h_t, z_pos_t) and dot(h_t, z_neg_t) at every position ``[B, L]``."""
        table = self.item_encoder.table()
        h = self.hidden(seq, user_vec, table)
        return (h * table[pos]).sum(-1), (h * table[neg]).sum(-1)

    def last_hidden(self, seq: torch.Tensor, user_vec: torch.Tensor | None = None,
                    table: torch.Tensor | None = None) -> torch.Tensor:
        """User representation at the last position only ``[B, d]`` (what scoring needs).

        A backbone may offer ``forward_last`` when the last position is much cheaper alone
        (SR-GNN's readout is O(L^2) for all positions, O(L) for one).
        """
        table = self.item_encoder.table() if table is None else table
        if hasattr(self.backbone, "forward_last"):
            h = self.backbone.forward_last(table[seq], seq)[:, None, :]
        else:
            h = self.backbone(table[seq], seq)[:, -1:]
        if self.user_fusion is not None:
            if user_vec is None:
                raise ValueError("this model fuses a user rationale vector: pass user_vec")
            h = self.user_fusion(h, user_vec)
        return h[:, 0]

    def score_last(self, seq: torch.Tensor, user_vec: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of all items (column 0 = padding) from the last position ``[B, n_items + 1]``."""
        table = self.item_encoder.table()
        return self.last_hidden(seq, user_vec, table) @ table.T
