"""Fitted checkpoints the Space may rank with: discovery, and the rebuild (through
``slim.recommenders.checkpoint.load_module``, the function slim_eval reuses fits with)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from slim.data.dataset import SequentialDataset


@dataclass
class Checkpoint:
    path: Path
    record: dict
    backbone: str
    variant: str
    tag: str
    seed: int
    valid_ndcg10: float

    @property
    def label(self) -> str:
        names = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "srgnn": "SRGNN"}
        b = names.get(self.backbone, self.backbone)
        return {"id": b, "text": f"{b}+", "teacher": f"SLIM- ({b})", "slim": f"SLIM ({b})",
                "match": "SLIM text matching"}.get(self.variant, f"{b}-{self.variant}")


def find_checkpoints(roots: Sequence[Path]) -> list[Checkpoint]:
    """Complete checkpoints (``config.json`` with complete=true) under the given checkpoint dirs."""
    out = []
    for root in roots:
        if not root.is_dir():
            continue
        for cfg_path in sorted(root.glob("*/config.json")):
            try:
                record = json.loads(cfg_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not record.get("complete") or not (cfg_path.parent / "model.safetensors").exists():
                continue
            c = record["key"]["config"]
            out.append(Checkpoint(cfg_path.parent, record, c["backbone"], c["variant"], c.get("tag", ""),
                                  int(c["seed"]), float(record.get("valid_metrics", {}).get("NDCG@10", -1.0))))
    return out


def load_module(ck: Checkpoint, dataset: SequentialDataset, item_text: np.ndarray | None):
    """The checkpoint's module, rebuilt by the function slim_eval reuses fits with; the rationale
    side is left to the user being scored (``new_users``: a demo user's rationale is written now)."""
    from slim.recommenders.checkpoint import load_module as rebuild

    return rebuild(ck.path, dataset, item_text, record=ck.record, new_users=True)[0]


class CheckpointRefused(ValueError):
    """A fitted checkpoint the demo will not use (its provenance does not match the inputs here)."""
