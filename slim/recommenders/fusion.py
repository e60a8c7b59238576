"""The SLIM fusion layer (paper section 2.3, Eq. 6), as wrappers around any backbone.

    item:  z_i = g_f([g_l(z_i^text); z_i^id])          (also the "X+" item-text baseline)
    user:  s_u = g_f'([g_l'(s_u^text); s_u^seq])        (SLIM- with teacher, SLIM with student)

g_l: linear text-dim -> d; g_f: linear 2d -> d. The paper writes the same symbols on both sides
but never says whether the layers are shared (PAPER.md section 5: UNCONFIRMED). We use SEPARATE
layers for the item and user sides: the item side fuses a title vector with an ID embedding, the
user side a rationale vector with a sequence state; they live at different scales and roles, and
sharing would tie the scoring geometry to a per-position GRU/attention output. Documented as a
choice, not a finding.

Neither wrapper touches the backbone: ``TextItemEncoder`` replaces the item table the backbone
reads and scores against, ``UserTextFusion`` post-processes the backbone's hidden states.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slim.recommenders.base import IDItemEncoder


class TextItemEncoder(nn.Module):
    """z_i = g_f([g_l(text_i); id_i]) for every item; the frozen text matrix is a buffer."""

    def __init__(self, id_encoder: IDItemEncoder, item_text: np.ndarray | torch.Tensor):
        super().__init__()
        text = torch.as_tensor(np.asarray(item_text, dtype=np.float32))
        if text.shape[0] != id_encoder.n_items + 1:
            raise ValueError(f"item_text has {text.shape[0]} rows; expected n_items + 1 = {id_encoder.n_items + 1}")
        d = id_encoder.dim
        self.id_encoder, self.dim, self.n_items = id_encoder, d, id_encoder.n_items
        self.register_buffer("text", text, persistent=False)  # inputs, not weights: provenance-hashed instead
        self.g_l = nn.Linear(text.shape[1], d)
        self.g_f = nn.Linear(2 * d, d)

    def table(self) -> torch.Tensor:
        fused = self.g_f(torch.cat([self.g_l(self.text), self.id_encoder.table()], -1))
        keep = torch.ones(fused.shape[0], 1, device=fused.device)
        keep[0] = 0  # padding row stays zero
        return fused * keep


class UserTextFusion(nn.Module):
    """s_u = g_f'([g_l'(rationale_u); h_t]) at every position t (one rationale per user)."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.g_l = nn.Linear(text_dim, dim)
        self.g_f = nn.Linear(2 * dim, dim)

    def forward(self, hidden: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        """``user_vec``: ``[B, D]`` (one per user) or ``[B, L, D]`` (one per position: leakage-free training)."""
        u = self.g_l(user_vec)
        u = u[:, None, :].expand(-1, hidden.shape[1], -1) if u.dim() == 2 else u
        return self.g_f(torch.cat([u, hidden], -1))


class GatedUserTextFusion(nn.Module):
    """s_u = h_t + g * g_l'(rationale_u), with the per-dimension gate g starting at exactly 0 (ours).

    Why: with the paper's concatenation a rationale that carries no signal still rewires the user
    state through g_f' and can pull SLIM below X+; here the model starts as X+ (g = 0 leaves h_t
    untouched) and lets the rationale in only as far as training finds it useful (ReZero-style
    zero init; g's gradient is non-zero from the first step because g_l'(r) is not). The item side
    stays X+'s concatenation: gating it too would start from plain X, not X+.
    """

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.g_l = nn.Linear(text_dim, dim)
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, hidden: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        """``user_vec``: ``[B, D]`` or ``[B, L, D]``, as in :class:`UserTextFusion`."""
        u = self.gate * self.g_l(user_vec)
        return hidden + (u[:, None, :] if u.dim() == 2 else u)
