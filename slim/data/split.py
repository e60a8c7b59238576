"""The leave-one-out split in one place: how many items a split holds out, and where a history ends.

A user's sequence ``seq`` ends with the validation target and then the test target. Scoring the
validation target shows the model ``seq[:-2]``; scoring the test target shows ``seq[:-1]`` (the
train prefix plus the validation item). Every reader of histories, targets or history lengths
goes through :func:`held_out`, so the boundary cannot drift between training, evaluation,
prompts and the demo.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Split = Literal["valid", "test"]
SPLITS: tuple[Split, ...] = ("valid", "test")


def held_out(split: str) -> int:
    """Items at the end of a sequence a model must not see when predicting the ``split`` target:
    2 for ``valid`` (its target and the test target), 1 for ``test``."""
    return 2 if split == "valid" else 1


def history_end(offsets: np.ndarray, users: np.ndarray, split: str) -> np.ndarray:
    """Flat end positions (exclusive) of the ``split`` histories of ``users`` in a CSR ``offsets``;
    the position itself is the ``split`` target."""
    return offsets[np.asarray(users) + 1] - held_out(split)
