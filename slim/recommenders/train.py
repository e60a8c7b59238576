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

While training, the checkpoint directory (``slim.recommenders.checkpoint``) also holds
``train_state.pt`` (state dicts only; loaded with ``weights_only=True``); the settings are
``slim.recommenders.fit_config.FitConfig`` and the arrays ``slim.recommenders.batches``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from slim.artifacts.provenance import code_version, write_json
from slim.data.dataset import SequentialDataset
from slim.eval.metrics import evaluate
from slim.recommenders import USER_TEXT_VARIANTS

from .batches import NegativeSampler, leakage_free, training_arrays
from .checkpoint import (FittedModel, build, checkpoint_key, complete_checkpoint, key_hash, load_fitted,
                         save_safetensors, text_inputs_record, user_text_dim)
from .fit_config import FitConfig


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
    ckpt = Path(run_dir) / f"{cfg.name}-{key_hash(key)}"
    record_path, state_path = ckpt / "config.json", ckpt / "train_state.pt"
    if not force:
        for d in [ckpt, *(Path(r) / ckpt.name for r in reuse_from)]:
            if complete_checkpoint(d, key) is not None:
                return load_fitted(d, dataset, item_text, user_text)
    ckpt.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build(cfg, dataset, item_text, user_text_dim(cfg, dataset, user_text))
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
        if st.get("key_hash") == key_hash(key):
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
            torch.save({"key_hash": key_hash(key), "model": model.state_dict(), "optim": opt.state_dict(),
                        "best": best_state, "epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch,
                        "bad": bad, "history": json.dumps(history)}, tmp)
            os.replace(tmp, state_path)
        else:
            history.append(row)
    bar.close()

    model.load_state_dict(best_state)
    model.eval()
    save_safetensors(model, ckpt / "model.safetensors")
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
