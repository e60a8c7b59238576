"""``distill``: LoRA SFT of the student on (simplified prompt -> teacher rationale).

Data: ``ok`` rows of ``runs/<dataset>/rationales/teacher.jsonl`` (``--teacher-file``); the prompt is
rebuilt from the dataset history of the row's split (``valid`` = train prefix), see ``slim.student.sft``.
A stable 10 % of users (hash of the user id) is held out for validation loss.

Outputs in ``runs/<dataset>/distill/``: ``log.jsonl`` (step, loss, val_loss, seconds, ...),
``checkpoint/`` (adapter + optimizer state + position; a rerun resumes there), ``adapter/``
(adapter_model.safetensors, adapter_config.json, README.md model card, metrics.json, and
``adapter.gguf`` for llama.cpp unless ``--no-gguf``).

Single process (CPU or one GPU)::

    python -m slim_train distill --dataset ml-100k --epochs 3

Several processes (DDP through accelerate; batch size is per process; on a CPU-only box the same
command runs N CPU processes over gloo, tests/test_distributed.py; docs/SCALE.md)::

    accelerate launch --multi_gpu --num_processes 4 -m slim_train distill --dataset ml-100k --precision bf16

The package by job: ``config`` (the settings and their flags), ``data`` (rows, split, batch order),
``checkpoint`` (atomic checkpoints, RNG state, log trimming), ``device`` (precision, accelerate),
``loop`` (the training loop), ``adapter`` (the finished folder, card, GGUF) and ``plot`` (the loss curve).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..common import add_common, add_deprecated, add_first_users, run_dir
from .config import add_config_args, config_from_args


def add_args(p: argparse.ArgumentParser) -> None:
    add_common(p, sample=False)
    add_first_users(p, "train on the ok rows of the first N users in teacher-file order, which is teach's "
                    "permutation order (all when omitted)")
    p.add_argument("--teacher-file", type=Path, nargs="+", default=None,
                   help="default: <run dir>/rationales/teacher.jsonl; several files (e.g. ML-100K and Games rows) "
                        "train one student on several domains: each row's `dataset` field names its dataset")
    add_config_args(p)
    add_deprecated(p, "--seed", "--lora-seed", dest="seed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-initial-eval", action="store_true", help="skip the validation loss before training")
    p.add_argument("--no-gguf", action="store_true", help="do not convert the adapter for llama.cpp")
    p.add_argument("--check-sync", action="store_true", help="after every step, compare a digest of the trainable "
                   "weights across processes (logged as rank_weights; stops on a mismatch)")
    p.add_argument("--adapter-out", type=Path, default=None, help="default: <run dir>/distill/adapter")


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill`/`timeout` then saves a checkpoint like Ctrl-C does


def main(args: argparse.Namespace) -> None:
    import signal

    import torch

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)

    from slim.data.dataset import load_dataset
    from slim.lm.weights import STUDENT_NAME

    from .data import read_teacher_rows
    from .device import hardware
    from .loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    if not cfg.base:
        from slim.student.hf_model import student_hf_path

        cfg.base = str(student_hf_path())
        cfg.base_model = cfg.base_model or STUDENT_NAME
    cfg.base_model = cfg.base_model or cfg.base
    out = run_dir(args)
    teacher_files = args.teacher_file or [out / "rationales" / "teacher.jsonl"]
    rows = read_teacher_rows(teacher_files, args.dataset)
    ok_models = sorted({r.get("model", "?") for r in rows if r.get("status") == "ok"})
    ds = load_dataset(args.dataset, args.data_dir)
    others = sorted({str(r["dataset"]) for r in rows if r.get("dataset") and r["dataset"] != args.dataset})
    also = [load_dataset(name, args.data_dir) for name in others]
    meta = {"dataset": args.dataset, "teacher_file": ", ".join(str(f) for f in teacher_files),
            "teacher_model": ", ".join(ok_models), "users": args.users, "hardware": hardware(),
            **({"also_datasets": others} if others else {})}
    metrics = train(cfg, rows, ds, out / "distill", args.adapter_out or out / "distill" / "adapter", meta=meta,
                    restart=args.restart, initial_eval=not args.no_initial_eval, gguf=not args.no_gguf,
                    check_sync=args.check_sync, also=also)
    if metrics:
        print(json.dumps({k: metrics[k] for k in ("steps", "train_loss_last", "val_loss_initial", "val_loss_final",
                                                  "seconds_per_step", "peak_rss_gb")}, indent=1))
