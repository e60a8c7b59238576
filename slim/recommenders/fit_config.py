"""What a fit is: the settings that change the trained weights, and so name its checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

from slim.recommenders import BACKBONES, VARIANTS

DEFAULT_LAYERS = {"sasrec": 2, "gru4rec": 1, "srgnn": 1}
# SR-GNN's all-position readout costs O(L^2 d) per sequence: at L=50 one batch took 5x SASRec's time
# (measured, 1 thread), at L=20 1.4x. SR-GNN is a session model; 20 recent items is its session here.
DEFAULT_MAX_LEN = {"sasrec": 50, "gru4rec": 50, "srgnn": 20, "none": 50}


@dataclass
class FitConfig:
    """Everything that changes the trained weights (and so the checkpoint key).

    ``max_len=None`` means 50 (SR-GNN: 20, see DEFAULT_MAX_LEN).
    ``layers=None`` means the backbone's paper default (SASRec 2 blocks, GRU4Rec 1 layer; SR-GNN
    always runs one GNN step). ``heads``/``dropout`` default to SASRec's ML-1M setting.
    ``tag`` names otherwise identical runs with different text inputs (e.g. "step1").
    """

    backbone: str = "sasrec"
    variant: str = "id"
    seed: int = 0
    epochs: int = 200
    patience: int = 5  # evaluations without a new best validation NDCG@10
    eval_every: int = 5
    dim: int = 64
    max_len: int | None = None
    layers: int | None = None
    heads: int = 1
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    tag: str = ""
    fusion: str = "concat"  # teacher/slim: "concat" (paper, Eq. 6) or "gated" (zero-init gate, ours)
    # teacher/slim training (ours): 0 = the user's rationale at every training position (paper);
    # N > 0 = a zero rationale vector at the positions whose target is among the last N items of the
    # train prefix, which the prompt the training rationale was written from showed (it shows the 20
    # most recent titles: slim.lm.prompts.DEFAULT_MAX_HISTORY). Scoring is unchanged.
    rationale_window: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
        if self.variant != "match" and self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        if self.variant == "match":
            self.backbone = "none"
        if self.max_len is None:
            self.max_len = DEFAULT_MAX_LEN[self.backbone]
        if self.layers is None:
            self.layers = DEFAULT_LAYERS.get(self.backbone, 1)

    @property
    def name(self) -> str:
        tag = f"-{self.tag}" if self.tag else ""
        return f"{self.backbone}-{self.variant}{tag}-seed{self.seed}"


