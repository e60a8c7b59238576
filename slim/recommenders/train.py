"""Training loop shared by every backbone x variant: SASRec-style, early-stopped, resumable, cached.

Why this shape (Kang & McAuley 2018, section III-E and their code):
- one left-padded sequence per user: the last ``max_len`` items of the TRAIN prefix (seq[:-2]);
  every position predicts the next item, so one pass over the users is one epoch;
- binary cross-entropy with one sampled negative per position; the negative is never an item of
  the user's train prefix (the valid/test targets are not looked at, so they can be sampled);
- Adam; early stopping on validation NDCG@10 under the ``full`` protocol (slim.eval.metrics);
- at test time the model reads seq[:-1] (train prefix + valid item) with the same weights.

Determinism: the model is initialised under ``torch.manual_seed(seed)`` and epoch ``e`` draws its
order, negatives and dropout masks from generators seeded by (seed, e). A run stopped after any
evaluation and resumed from ``train_state.pt`` therefore ends exactly like an uninterrupted run.

Artefacts (``<run_dir>/<backbone>-<variant>[-<tag>]-seed<seed>-<key hash>/``):
``model.safetensors`` (best weights), ``config.json`` (provenance: config, dataset fingerprint
and stats, text-input hashes, code version, best epoch, valid metrics, per-epoch history), and,
while training, ``train_state.pt`` (state dicts only; loaded with ``weights_only=True``).
A directory whose ``config.json`` says complete and whose key matches is reused, not retrained.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slim.artifacts.provenance import (changed_rows, code_version, probe_mismatch, sha256_json, text_inputs_key,
                                       vector_probe, write_json)
from slim.data.dataset import SequentialDataset
from slim.data.split import Split, held_out, history_end
from slim.eval.metrics import dataset_fingerprint, evaluate
from slim.recommenders import BACKBONES, USER_TEXT_VARIANTS, VARIANTS, build_model

FORMAT_VERSION = 2  # 2: text inputs keyed by their texts + encoder, not by the vectors' bytes
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
    # most recent titles: slim.prompts.DEFAULT_MAX_HISTORY). Scoring is unchanged.
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


# ---------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------

def checkpoint_key(dataset: SequentialDataset, cfg: FitConfig, item_text, user_text) -> dict[str, Any]:
    """What must match for a checkpoint to be reused (code version is recorded, not matched).

    Text inputs are named by their texts and encoder (``slim.artifacts.text_inputs_key``), never by
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


def _key_hash(key: dict) -> str:
    return sha256_json(key, chars=10)


def _save_safetensors(model: nn.Module, path: Path) -> None:
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
        udim = _user_text_dim(cfg, dataset, user_text)
    model = _build(cfg, dataset, item_text, udim)
    # shipped checkpoints are stored in fp16 (slim_train fits export): load_state_dict copies them
    # into the fp32 parameters, so scores are always computed in fp32
    model.load_state_dict(state)
    model.float().eval()
    return model, record


def checkpoint_dir_name(dataset: SequentialDataset, cfg: FitConfig, item_text=None, user_text=None) -> str:
    """``<backbone>-<variant>[-<tag>]-seed<k>-<key hash>``: the directory ``fit`` writes and reuses."""
    return f"{cfg.name}-{_key_hash(checkpoint_key(dataset, cfg, item_text, user_text))}"


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


def _user_text_dim(cfg: FitConfig, dataset: SequentialDataset, user_text) -> int | None:
    """The rationale vector width a ``teacher``/``slim`` fit needs (checking the matrices), else None."""
    if cfg.variant not in USER_TEXT_VARIANTS:
        return None
    if not user_text or "valid" not in user_text:
        raise ValueError(f"variant {cfg.variant!r} needs user_text={{'valid': ..., 'test': ...}}")
    for split, v in user_text.items():
        if v.shape[0] != dataset.n_users:
            raise ValueError(f"user_text[{split!r}] has {v.shape[0]} rows; the dataset has {dataset.n_users} users")
    return int(user_text["valid"].shape[1])


def _build(cfg: FitConfig, dataset: SequentialDataset, item_text, udim: int | None) -> nn.Module:
    return build_model(cfg.backbone, cfg.variant, dataset.n_items, cfg.dim, cfg.max_len, cfg.layers, cfg.heads,
                       cfg.dropout, item_text=item_text, user_text_dim=udim, fusion=cfg.fusion)


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------

def fit(
    dataset: SequentialDataset,
    cfg: FitConfig,
    run_dir: str | Path,
    item_text: np.ndarray | None = None,
    user_text: dict[str, np.ndarray] | None = None,
    progress: bool = True,
    force: bool = False,
    reuse_from: Sequence[str | Path] = (),
) -> FittedModel:
    """Train (or reuse/resume) ``cfg`` on ``dataset``; returns the best-validation model.

    ``item_text``: ``[n_items + 1, D]`` (row 0 zeros) for every variant but ``id``.
    ``user_text``: {"valid": [n_users, D], "test": [n_users, D]} rationale vectors for
    ``teacher``/``slim``/``match``; training uses the "valid" ones (written from the train prefix).
    ``reuse_from``: read-only checkpoint roots (e.g. the shipped ``assets/<dataset>/checkpoints``),
    tried in order after ``run_dir``: a complete checkpoint there whose key matches is loaded in
    place (nothing copied, nothing trained). ``force``: ignore every existing checkpoint and train
    into ``run_dir``.
    """
    key = checkpoint_key(dataset, cfg, item_text, user_text)
    ckpt = Path(run_dir) / f"{cfg.name}-{_key_hash(key)}"
    record_path, state_path = ckpt / "config.json", ckpt / "train_state.pt"
    if not force:
        for d in [ckpt, *(Path(r) / ckpt.name for r in reuse_from)]:
            if complete_checkpoint(d, key) is not None:
                return load_fitted(d, dataset, item_text, user_text)
    ckpt.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = _build(cfg, dataset, item_text, _user_text_dim(cfg, dataset, user_text))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    fitted = FittedModel(model, dataset, cfg, ckpt, {}, user_text)

    users, inp, pos = training_arrays(dataset, cfg.max_len, match=cfg.variant == "match")
    sampler = NegativeSampler(dataset)
    train_uvec = (torch.as_tensor(np.asarray(user_text["valid"], dtype=np.float32))
                  if cfg.variant in USER_TEXT_VARIANTS else None)

    start_epoch, best_metric, best_epoch, bad, history = 1, -1.0, 0, 0, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if state_path.exists() and not force:
        st = torch.load(state_path, weights_only=True)
        if st.get("key_hash") == _key_hash(key):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optim"])
            best_state = st["best"]
            start_epoch, best_metric, best_epoch, bad = st["epoch"] + 1, st["best_metric"], st["best_epoch"], st["bad"]
            history = json.loads(st["history"])

    from tqdm.auto import tqdm

    bar = tqdm(range(start_epoch, cfg.epochs + 1), desc=cfg.name, disable=not progress, leave=False)
    for epoch in bar:
        if bad >= cfg.patience:
            break
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(users))
        total, count = 0.0, 0
        for lo in range(0, len(order), cfg.batch_size):
            b = order[lo : lo + cfg.batch_size]
            b_pos = pos[b]
            b_neg = sampler.sample(users[b], b_pos, rng)
            mask = torch.as_tensor(b_pos > 0)
            uvec = train_uvec[torch.as_tensor(users[b])] if train_uvec is not None else None
            if uvec is not None and cfg.rationale_window:
                uvec = leakage_free(uvec, b_pos.shape[1], cfg.rationale_window)
            pl, nl = model.pair_logits(torch.as_tensor(inp[b]), torch.as_tensor(b_pos), torch.as_tensor(b_neg), uvec)
            loss = (F.binary_cross_entropy_with_logits(pl[mask], torch.ones_like(pl[mask]), reduction="sum")
                    + F.binary_cross_entropy_with_logits(nl[mask], torch.zeros_like(nl[mask]), reduction="sum"))
            n = int(mask.sum())
            opt.zero_grad(set_to_none=True)
            (loss / max(n, 1)).backward()
            opt.step()
            total, count = total + float(loss.detach()), count + n
        train_s = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, "loss": total / max(count, 1), "train_seconds": round(train_s, 3)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t1 = time.perf_counter()
            metrics = evaluate(fitted.score, dataset, "valid", "full")
            row["eval_seconds"] = round(time.perf_counter() - t1, 3)
            row["valid"] = metrics
            if metrics["NDCG@10"] > best_metric:
                best_metric, best_epoch, bad = metrics["NDCG@10"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", ndcg10=f"{metrics['NDCG@10']:.4f}", best=best_epoch)
            tmp = state_path.with_suffix(".tmp")
            torch.save({"key_hash": _key_hash(key), "model": model.state_dict(), "optim": opt.state_dict(),
                        "best": best_state, "epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch,
                        "bad": bad, "history": json.dumps(history)}, tmp)
            os.replace(tmp, state_path)
        else:
            history.append(row)
    bar.close()

    model.load_state_dict(best_state)
    model.eval()
    _save_safetensors(model, ckpt / "model.safetensors")
    best_row = next((r for r in history if r["epoch"] == best_epoch and "valid" in r), None)
    train_secs = [r["train_seconds"] for r in history]
    record = {
        "complete": True,
        "key": key,
        "text_inputs": text_inputs_record(item_text, user_text),
        "name": cfg.name,
        "dataset_stats": dataset.stats(),
        "code_version": code_version(),
        "torch": torch.__version__,
        "best_epoch": best_epoch,
        "valid_metrics": best_row["valid"] if best_row else {},
        "epochs_run": history[-1]["epoch"] if history else 0,
        "mean_epoch_seconds": float(np.mean(train_secs)) if train_secs else None,
        "history": history,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(record_path, record)
    state_path.unlink(missing_ok=True)
    fitted.record = record
    return fitted
