"""The arrays a fit trains and scores on: left-padded histories, training pairs and sampled negatives.

One left-padded sequence per user: the last ``max_len`` items of the TRAIN prefix (seq[:-2]); every
position predicts the next item. The sampled negative is never an item of the user's train prefix
(the valid/test targets are not looked at, so they can be sampled).
"""
from __future__ import annotations

import numpy as np
import torch

from slim.data.dataset import SequentialDataset
from slim.data.split import Split, held_out, history_end


def _left_padded(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """Rows ``values[max(start, end-length):end]`` right-aligned in a zero matrix ``[N, length]``."""
    idx = ends[:, None] - length + np.arange(length)[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, values[np.clip(idx, 0, len(values) - 1)], 0).astype(np.int64)


def history_matrix(dataset: SequentialDataset, users: np.ndarray, split: Split, max_len: int) -> np.ndarray:
    """Left-padded last ``max_len`` items of history(u, split): seq[:-2] (valid) or seq[:-1] (test)."""
    users = np.asarray(users, dtype=np.int64)
    ends = history_end(dataset.offsets, users, split)
    return _left_padded(dataset.values, dataset.offsets[users], ends, max_len)


def leakage_free(user_vec: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """``[B, L, D]``: the rationale vector at every training position, zero at the last ``window``.

    Training sequences are left-padded with the newest target at position L-1, so the last
    ``window`` positions are exactly the targets among the last ``window`` train-prefix items, the
    ones the training rationale's prompt showed; on them the rationale has seen the answer.
    """
    out = user_vec[:, None, :].expand(-1, length, -1).clone()
    out[:, max(0, length - window):] = 0
    return out


def training_arrays(dataset: SequentialDataset, max_len: int, match: bool = False) -> tuple[np.ndarray, ...]:
    """(users, inputs [U, L], positives [U, L]) from each user's train prefix seq[:-2].

    Sequence models: inputs = prefix[:-1], positives = prefix[1:] (aligned, left-padded).
    Text matching: positives = the prefix itself (the user side is the rationale, not the inputs).
    Users without any training pair are dropped.
    """
    users = np.arange(dataset.n_users)
    starts, ends = dataset.offsets[:-1], dataset.offsets[1:] - held_out("valid")
    if match:
        pos = _left_padded(dataset.values, starts, ends, max_len)
        inp = np.zeros_like(pos)
    else:
        inp = _left_padded(dataset.values, starts, ends - 1, max_len)
        pos = _left_padded(dataset.values, starts + 1, ends, max_len)
    keep = (pos > 0).any(1)
    return users[keep], inp[keep], pos[keep]


class NegativeSampler:
    """Uniform items that are not in the user's train prefix (vectorised rejection sampling)."""

    def __init__(self, dataset: SequentialDataset):
        self.n_items = dataset.n_items
        lens = dataset.lengths - held_out("valid")
        users = np.repeat(np.arange(dataset.n_users), lens)
        starts = np.repeat(dataset.offsets[:-1], lens)
        pos = starts + np.arange(lens.sum()) - np.repeat(np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        self.keys = np.sort(users * (self.n_items + 1) + dataset.values[pos])

    def _seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = users * (self.n_items + 1) + items
        i = np.searchsorted(self.keys, k).clip(max=len(self.keys) - 1)
        return self.keys[i] == k

    def sample(self, users: np.ndarray, shape_like: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = np.broadcast_to(users[:, None], shape_like.shape)
        neg = rng.integers(1, self.n_items + 1, size=shape_like.shape)
        bad = self._seen(u, neg)
        for _ in range(100):
            if not bad.any():
                break
            neg[bad] = rng.integers(1, self.n_items + 1, size=int(bad.sum()))
            bad = self._seen(u, neg)
        return np.where(shape_like > 0, neg, 0)

