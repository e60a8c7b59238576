"""A fit's checkpoint: the key that decides reuse, the provenance record, and the one rebuild of a module.

Artefacts (``<run_dir>/<backbone>-<variant>[-<tag>]-seed<seed>-<key hash>/``):
``model.safetensors`` (best weights), ``config.json`` (provenance: config, dataset fingerprint
and stats, text-input hashes, code version, best epoch, valid metrics, per-epoch history).
A directory whose ``config.json`` says complete and whose key matches is reused, not retrained.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slim.artifacts.provenance import changed_rows, probe_mismatch, sha256_json, text_inputs_key, vector_probe
from slim.data.dataset import SequentialDataset
from slim.data.split import Split
from slim.eval.metrics import dataset_fingerprint
from slim.recommenders import USER_TEXT_VARIANTS, build_model

from .batches import history_matrix
from .fit_config import FitConfig

FORMAT_VERSION = 2  # 2: text inputs keyed by their texts + encoder, not by the vectors' bytes


@dataclass
class FittedModel:
    """A trained model bound to its dataset and text inputs; ``score`` is a slim.eval.metrics score_fn."""

    model: nn.Module
    dataset: SequentialDataset
    config: FitConfig
    checkpoint_dir: Path
    record: dict
    user_text: dict[str, np.ndarray] | None = None
    _user_text_t: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def best_epoch(self) -> int:
        return int(self.record["best_epoch"])

    @property
    def valid_metrics(self) -> dict[str, float]:
        return dict(self.record["valid_metrics"])

    @torch.no_grad()
    def score(self, users: torch.Tensor | np.ndarray, split: Split) -> torch.Tensor:
        """``[B, n_items + 1]`` scores from history(u, split) (column 0 = padding, meaningless)."""
        self.model.eval()
        users_np = np.asarray(users.cpu() if isinstance(users, torch.Tensor) else users, dtype=np.int64)
        seq = torch.as_tensor(history_matrix(self.dataset, users_np, split, self.config.max_len))
        return self.model.score_last(seq, _user_vec(self, users_np, split))


def _user_vec(fm: FittedModel, users: np.ndarray, split: str) -> torch.Tensor | None:
    if not getattr(fm.model, "needs_user_text", False):
        return None
    if split not in fm._user_text_t:
        if fm.user_text is None or split not in fm.user_text:
            raise ValueError(f"this model needs user_text[{split!r}] (rationale vectors) to score")
        fm._user_text_t[split] = torch.as_tensor(np.asarray(fm.user_text[split], dtype=np.float32))
    return fm._user_text_t[split][torch.as_tensor(users)]



def checkpoint_key(dataset: SequentialDataset, cfg: FitConfig, item_text, user_text) -> dict[str, Any]:
    """What must match for a checkpoint to be reused (code version is recorded, not matched).

    Text inputs are named by their texts and encoder (``slim.artifacts.provenance.text_inputs_key``), never by
    the bytes of the vectors: the same titles encode to slightly different floats on another
    machine, and a shipped checkpoint must load there. The vectors themselves are checked against
    a stored probe with a tolerance (:func:`text_inputs_check`).
    """
    needs_items = cfg.variant != "id"
    needs_users = cfg.variant in USER_TEXT_VARIANTS
    return {
        "format": FORMAT_VERSION,
        "config": _config_key(cfg),
        "dataset": {"name": dataset.name, "fingerprint": dataset_fingerprint(dataset), "n_items": dataset.n_items},
        "item_text": text_inputs_key(item_text) if needs_items else None,
        "user_text": ({s: text_inputs_key(v) for s, v in sorted(user_text.items())}
                      if needs_users and user_text else None),
    }


# fields added to FitConfig after checkpoints were shipped: left out of the key at their default, so a
# new option does not orphan every fitted model (the value is still in the record's config)
LATE_FIELDS = {"fusion": "concat", "rationale_window": 0}


def _config_key(cfg: FitConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if not (k in LATE_FIELDS and v == LATE_FIELDS[k])}


def _text_inputs(item_text, user_text) -> dict[str, Any]:
    """The named text inputs of a fit, as ``{"item_text": vectors, "user_text/<split>": vectors}``."""
    out = {"item_text": item_text} if item_text is not None else {}
    for split, v in sorted((user_text or {}).items()):
        out[f"user_text/{split}"] = v
    return out


def text_inputs_record(item_text, user_text) -> dict[str, Any]:
    """Stored beside the key: per input a probe of the vectors and a digest per row (texts)."""
    return {name: {"probe": vector_probe(v), "row_digests": getattr(v, "row_digests", None)}
            for name, v in _text_inputs(item_text, user_text).items()}


def text_inputs_check(record: dict, key: dict, item_text, user_text, where: str) -> None:
    """Refuse, saying which input and which rows changed, when ``key`` differs from ``record``'s.

    Rows are item indices for ``item_text`` and user indices for ``user_text/<split>``.
    """
    stored_key, stored_inputs = record["key"], record.get("text_inputs") or {}
    inputs = _text_inputs(item_text, user_text)
    problems = []
    for field_name in key:
        if key[field_name] == stored_key.get(field_name):
            continue
        if field_name not in ("item_text", "user_text"):
            problems.append(f"{field_name} differs")
            continue
        for name, v in inputs.items():
            if not name.startswith(field_name):
                continue
            split = name.split("/", 1)[1] if "/" in name else None
            now = key[field_name][split] if split else key[field_name]
            then = (stored_key.get(field_name) or {}).get(split) if split else stored_key.get(field_name)
            if now != then:
                rows = changed_rows((stored_inputs.get(name) or {}).get("row_digests"), v)
                what = "item" if field_name == "item_text" else "user"
                detail = f" (first changed {what} rows: {rows})" if rows else ""
                problems.append(f"{name}: the texts or encoder differ from the ones it was trained on{detail}")
        if not problems:
            problems.append(f"{field_name} differs")
    if problems:
        raise ValueError(f"{where}: refused, inputs differ from the checkpoint's provenance: " + "; ".join(problems)
                         + ". Fix: pass the same texts, or refit (slim_eval --refit)")
    for name, v in inputs.items():
        why = probe_mismatch((stored_inputs.get(name) or {}).get("probe"), v)
        if why:
            raise ValueError(f"{where}: refused, {name} vectors are not the ones it was trained on: {why}. "
                             "Fix: use the encoder the checkpoint names, or refit (slim_eval --refit)")


def key_hash(key: dict) -> str:
    return sha256_json(key, chars=10)


def save_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def load_fitted(
    checkpoint_dir: str | Path,
    dataset: SequentialDataset,
    item_text: np.ndarray | None = None,
    user_text: dict[str, np.ndarray] | None = None,
) -> FittedModel:
    """Rebuild a finished run from its directory; refuses if the inputs differ from its record."""
    checkpoint_dir = Path(checkpoint_dir)
    model, record = load_module(checkpoint_dir, dataset, item_text, user_text)
    return FittedModel(model, dataset, FitConfig(**record["key"]["config"]), checkpoint_dir, record, user_text)


def load_module(checkpoint_dir: str | Path, dataset: SequentialDataset, item_text: np.ndarray | None = None,
                user_text: dict[str, np.ndarray] | None = None, *, record: dict | None = None,
                new_users: bool = False) -> tuple[nn.Module, dict]:
    """The one rebuild of a fitted module from its directory: ``(module in eval mode, record)``.

    Refuses (ValueError, saying which input differs) when the inputs are not the ones the record
    names. ``new_users=False`` (a fit being reused): every input of the key is checked, the
    rationale vectors of the users included. ``new_users=True`` (the Space scoring a user whose
    rationale it writes now): the dataset and the item texts are checked, the training users'
    rationale inputs stay as recorded, and the rationale width is read from the weights.
    """
    from safetensors.torch import load_file

    checkpoint_dir = Path(checkpoint_dir)
    record = record if record is not None else json.loads((checkpoint_dir / "config.json").read_text())
    cfg = FitConfig(**record["key"]["config"])
    if new_users:
        key = record["key"]
        if isinstance(key.get("item_text"), str) and not key["item_text"].startswith("rounded:"):
            raise ValueError(f"{checkpoint_dir.name}: checkpoint format {key.get('format')} keys its item texts by "
                             "the bytes of the vectors, which differ across machines; this code keys them by the "
                             "texts and encoder (format 2). Fix: refit it (slim_eval --refit) or ship a format-2 "
                             "checkpoint")
        if key["dataset"]["fingerprint"] != dataset_fingerprint(dataset):
            raise ValueError(f"{checkpoint_dir.name}: trained on a different version of {dataset.name}")
        now = {**key, "item_text": text_inputs_key(item_text) if key.get("item_text") else None}
        text_inputs_check(record, now, item_text, None, checkpoint_dir.name)
    else:
        key = checkpoint_key(dataset, cfg, item_text, user_text)
        text_inputs_check(record, key, item_text, user_text, str(checkpoint_dir))
    state = load_file(str(checkpoint_dir / "model.safetensors"))
    if new_users:
        # the rationale vector size is the input width of g_l' (UserTextFusion.g_l), not of g_f'
        g_l = state.get("user_fusion.g_l.weight")
        udim = int(g_l.shape[1]) if g_l is not None and cfg.variant in ("teacher", "slim") else None  # fusion variants
    else:
        udim = user_text_dim(cfg, dataset, user_text)
    model = build(cfg, dataset, item_text, udim)
    # shipped checkpoints are stored in fp16 (slim_train fits export): load_state_dict copies them
    # into the fp32 parameters, so scores are always computed in fp32
    model.load_state_dict(state)
    model.float().eval()
    return model, record


def complete_checkpoint(ckpt: Path, key: dict | None = None) -> dict | None:
    """The record of a finished checkpoint directory (and whose key equals ``key``, when given), else None."""
    try:
        record = json.loads((Path(ckpt) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not record.get("complete") or not (Path(ckpt) / "model.safetensors").exists():
        return None
    if key is not None and record.get("key") != key:
        return None
    return record


def user_text_dim(cfg: FitConfig, dataset: SequentialDataset, user_text) -> int | None:
    """The rationale vector width a ``teacher``/``slim`` fit needs (checking the matrices), else None."""
    if cfg.variant not in USER_TEXT_VARIANTS:
        return None
    if not user_text or "valid" not in user_text:
        raise ValueError(f"variant {cfg.variant!r} needs user_text={{'valid': ..., 'test': ...}}")
    for split, v in user_text.items():
        if v.shape[0] != dataset.n_users:
            raise ValueError(f"user_text[{split!r}] has {v.shape[0]} rows; the dataset has {dataset.n_users} users")
    return int(user_text["valid"].shape[1])


def build(cfg: FitConfig, dataset: SequentialDataset, item_text, udim: int | None) -> nn.Module:
    return build_model(cfg.backbone, cfg.variant, dataset.n_items, cfg.dim, cfg.max_len, cfg.layers, cfg.heads,
                       cfg.dropout, item_text=item_text, user_text_dim=udim, fusion=cfg.fusion)

