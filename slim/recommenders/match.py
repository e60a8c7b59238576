"""ID-agnostic text matching (paper section 2.3, "Text Matching"; Table 2).

    z_i = g_t(z_i^text),  s_u = g_t(s_u^text),  score = dot(s_u, z_i),  BCE with sampled negatives.

No item IDs and no sequence encoder: the user's only "history" is the rationale vector, so the
model can score items it never saw in training (cold items) as long as they have text. g_t is a
single linear layer SHARED by both sides (the paper uses one symbol and both vectors come from
the same text encoder, so one projection into a common space is the natural reading).

Training pairs: the rationale written from the training prefix (``user_text["valid"]``) against
each item of that prefix (positives) and one sampled negative per positive. The rationale names
preferences/categories/items that the prefix supports, so matching it to the prefix items teaches
g_t which directions of the text space matter; the validation and test targets are never trained on.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TextMatcher(nn.Module):
    """``pair_logits`` / ``score_last`` mirror SeqRecModel so one training loop serves both."""

    needs_user_text = True

    def __init__(self, item_text: np.ndarray | torch.Tensor, dim: int):
        super().__init__()
        text = torch.as_tensor(np.asarray(item_text, dtype=np.float32))
        self.register_buffer("text", text, persistent=False)
        self.n_items = text.shape[0] - 1
        self.g_t = nn.Linear(text.shape[1], dim)

    def table(self) -> torch.Tensor:
        z = self.g_t(self.text)
        keep = torch.ones(z.shape[0], 1, device=z.device)
        keep[0] = 0
        return z * keep

    def pair_logits(
        self, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, user_vec: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if user_vec is None:
            raise ValueError("text matching needs user_vec (the rationale vectors)")
        table = self.table()
        s = self.g_t(user_vec)[:, None, :]
        return (s * table[pos]).sum(-1), (s * table[neg]).sum(-1)

    def score_last(self, seq: torch.Tensor, user_vec: torch.Tensor | None = None) -> torch.Tensor:
        if user_vec is None:
            raise ValueError("text matching needs user_vec (the rationale vectors)")
        return self.g_t(user_vec) @ self.table().T
