"""The finished adapter folder: peft weights, metrics.json, the model card, the loss curve and the GGUF copy.

Written into ``adapter.tmp`` and renamed into place, so a reader never sees half an adapter; the
GGUF conversion runs last and may fail without losing the peft adapter.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .config import DistillConfig
from .device import rss_gb
from .plot import loss_curve_png


def train_metrics(cfg: DistillConfig, history: dict, data_record: dict, step: int, steps_per_epoch: int,
                  log: list[dict], meta: dict) -> dict:
    """metrics.json: what the run was (config, data, hardware) and what it measured (losses, seconds)."""
    from slim.student.card import curve_summary

    vals = [(s, v) for s, v in history["val"] if v is not None]
    best = min(vals, key=lambda sv: sv[1]) if vals else (None, None)
    train_rows = [r for r in log if "loss" in r]
    return {
        "base_model": cfg.base_model, "teacher_model": meta.get("teacher_model"), "dataset": meta.get("dataset"),
        "teacher_file": meta.get("teacher_file"), "config": asdict(cfg),
        **({"also_datasets": meta["also_datasets"]} if meta.get("also_datasets") else {}),
        "data": {k: v for k, v in data_record.items() if k != "teacher_rows"},
        "steps": step, "epochs_done": step / steps_per_epoch,
        "train_loss_last": history.get("last_loss"),
        "val_loss_initial": history.get("initial_val_loss"),
        "val_loss_final": vals[-1][1] if vals else None,
        "val_loss_best": best[1], "val_loss_best_step": best[0],
        "train_seconds": round(history["train_seconds"], 1),
        "seconds_per_step": (sum(r["seconds"] for r in train_rows) / len(train_rows)) if train_rows else None,
        "peak_rss_gb": round(rss_gb(), 2),
        "hardware": meta.get("hardware"),
        "curve": curve_summary(log),
        "users": data_record["teacher_rows"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_adapter(cfg: DistillConfig, model, history: dict, data_record: dict, step: int, steps_per_epoch: int,
                  log_path: Path, adapter_out: Path, meta: dict, gguf: bool) -> dict:
    """Write the adapter folder: safetensors + config (base = the Hub id) + metrics.json + card."""
    from slim.student.card import build_card

    tmp = adapter_out.with_name(adapter_out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    conf = json.loads((tmp / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = cfg.base_model or conf.get("base_model_name_or_path")
    (tmp / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    log = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()] if log_path.exists() else []
    metrics = train_metrics(cfg, history, data_record, step, steps_per_epoch, log, meta)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    build_card(metrics).save(tmp / "README.md")
    loss_curve_png(metrics, tmp / "loss_curve.png")
    shutil.rmtree(adapter_out, ignore_errors=True)
    tmp.rename(adapter_out)
    if gguf:
        convert_to_gguf(adapter_out, cfg.base)
    return metrics


def convert_to_gguf(adapter_out: Path, base: str) -> None:
    """``adapter.gguf`` for llama.cpp; a failure only warns (the peft adapter is done and can be converted later)."""
    try:
        from slim.student.gguf_lora import convert_lora

        convert_lora(adapter_out, base, adapter_out / "adapter.gguf")
    except Exception as e:  # noqa: BLE001 - the adapter is done; the fast path can be converted later
        print(f"warning: GGUF conversion failed ({type(e).__name__}: {e}); the peft adapter is complete. "
              f"Retry: python -c \"from slim.student.gguf_lora import convert_lora; convert_lora('{adapter_out}', "
              f"'{base}')\"", file=sys.stderr)
