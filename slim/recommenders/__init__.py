"""ID-based backbones (SASRec, GRU4Rec, SR-GNN), the SLIM fusion wrappers, ID-agnostic text matching.

``build_model`` turns a (backbone, variant) pair into a module; ``train.fit`` trains it.
Variants: ``id`` (backbone X), ``text`` (X+, item text fused into the item side), ``teacher`` and
``slim`` (X+ plus the user's rationale vector fused into the user side; teacher vs student
rationales differ only in the ``user_text`` passed in), ``match`` (text matching, no backbone).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from slim.recommenders.base import IDItemEncoder, SeqRecModel
from slim.recommenders.fusion import GatedUserTextFusion, TextItemEncoder, UserTextFusion
from slim.recommenders.gru4rec import GRU4Rec
from slim.recommenders.match import TextMatcher
from slim.recommenders.sasrec import SASRec
from slim.recommenders.srgnn import SRGNN

BACKBONES = ("sasrec", "gru4rec", "srgnn")
VARIANTS = ("id", "text", "teacher", "slim", "match")
FUSIONS = ("concat", "gated")  # user-side fusion of the rationale: the paper's concatenation, or a zero-init gate
ITEM_TEXT_VARIANTS = ("text", "teacher", "slim", "match")
USER_TEXT_VARIANTS = ("teacher", "slim", "match")


def build_backbone(name: str, dim: int, max_len: int, layers: int, heads: int, dropout: float) -> nn.Module:
    """A sequence encoder ``(emb [B, L, d], seq [B, L]) -> [B, L, d]``."""
    if name == "sasrec":
        return SASRec(dim, max_len, layers=layers, heads=heads, dropout=dropout)
    if name == "gru4rec":
        return GRU4Rec(dim, layers=layers, dropout=dropout)
    if name == "srgnn":
        return SRGNN(dim, dropout=dropout)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def build_model(
    backbone: str,
    variant: str,
    n_items: int,
    dim: int = 64,
    max_len: int = 50,
    layers: int = 2,
    heads: int = 1,
    dropout: float = 0.2,
    item_text: np.ndarray | None = None,
    user_text_dim: int | None = None,
    fusion: str = "concat",
) -> nn.Module:
    """Backbone x variant -> a module with ``pair_logits``, ``score_last``, ``needs_user_text``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    if variant in ITEM_TEXT_VARIANTS and item_text is None:
        raise ValueError(f"variant {variant!r} needs item_text (slim.lm.encoders.item_text_matrix)")
    if variant == "match":
        return TextMatcher(item_text, dim)
    item_encoder: nn.Module = IDItemEncoder(n_items, dim)
    if variant in ("text", "teacher", "slim"):
        item_encoder = TextItemEncoder(item_encoder, item_text)
    if variant in ("teacher", "slim"):
        if user_text_dim is None:
            raise ValueError(f"variant {variant!r} needs user_text (rationale vectors per split)")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
        user_fusion = (GatedUserTextFusion if fusion == "gated" else UserTextFusion)(dim, user_text_dim)
    else:
        user_fusion = None
    return SeqRecModel(item_encoder, build_backbone(backbone, dim, max_len, layers, heads, dropout), user_fusion)


__all__ = [
    "BACKBONES", "VARIANTS", "build_model", "build_backbone", "SeqRecModel", "IDItemEncoder",
    "TextItemEncoder", "UserTextFusion", "GatedUserTextFusion", "FUSIONS", "TextMatcher", "SASRec", "GRU4Rec", "SRGNN",
]
