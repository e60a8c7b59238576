"""The training loop: LoRA on the student, a compact manual accelerate loop, resumable bit for bit.

A manual loop rather than ``transformers.Trainer``: the data order is a pure function of (seed,
epoch) (its digest is checked on resume), each process takes its slice of every global batch, and
the checkpoint records the exact optimizer step plus every process's RNG state (torch, CUDA, numpy,
python: the LoRA dropout masks), so a resumed run equals an uninterrupted one bit for bit.
Validation loss is an exact token-weighted sum reduced across processes (no padded duplicate samples).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from .adapter import write_adapter
from .checkpoint import (capture_rng, load_state, recover_checkpoint, remove_checkpoint, restore_rng,
                         save_checkpoint, trim_log)
from .config import DistillConfig
from .data import epoch_order, global_batches, order_digest, row_digest, select_rows, split_examples
from .device import make_accelerator, resolve_precision, rss_gb


def lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    """Linear warmup then linear decay to 10 %; a pure function of the step, so resuming (even
    with a different --max-steps) needs no scheduler state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * max(0.1, 1.0 - 0.9 * min(1.0, frac))


def load_init_adapter(cfg: DistillConfig) -> dict:
    """The ``--init-adapter`` weights, after checking that they fit the LoRA this run builds.

    peft would silently ignore tensors for modules we do not wrap, and a different rank fails deep in
    torch; both are caught here with the flag to change.
    """
    from safetensors.torch import load_file

    folder = Path(cfg.init_adapter)
    conf_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not conf_path.exists() or not weights.exists():
        raise SystemExit(f"--init-adapter {folder}: expected a peft folder with adapter_config.json and "
                         "adapter_model.safetensors (e.g. assets/student or runs/<dataset>/distill/adapter)")
    conf = json.loads(conf_path.read_text())
    mismatch = {k: (conf.get(k), want) for k, want in (("r", cfg.lora_r), ("lora_alpha", cfg.lora_alpha))
                if conf.get(k) != want}
    if sorted(conf.get("target_modules") or []) != sorted(cfg.target_modules):
        mismatch["target_modules"] = (sorted(conf.get("target_modules") or []), sorted(cfg.target_modules))
    if mismatch:
        raise SystemExit(f"--init-adapter {folder} has a different LoRA shape (adapter, this run): {mismatch}; "
                         "pass the matching --lora-r/--lora-alpha/--target-modules")
    return load_file(str(weights))


def weights_digest(model) -> str:
    """sha256 of the trainable tensors' bytes: equal on every process exactly when DDP kept them in sync."""
    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.removeprefix("module.").encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train(cfg: DistillConfig, rows: list[dict], dataset, out_dir: Path, adapter_out: Path, *,
          meta: dict, restart: bool = False, initial_eval: bool = True, gguf: bool = True,
          check_sync: bool = False, also: Sequence = ()) -> dict:
    """Train (or resume) and write the adapter; returns the metrics dict. Usable from tests.

    ``dataset``: the primary dataset (its rows keep bare user ids); ``also``: further datasets whose
    rows in ``rows`` train the same student (their examples are keyed ``<dataset>/<user_id>``)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slim.student.sft import build_examples, collate

    cfg.precision = resolve_precision(cfg.precision)  # recorded resolved, so the card says what ran
    accelerator = make_accelerator(cfg.precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint"
    if accelerator.is_main_process:
        if restart:
            remove_checkpoint(ckpt)
        else:
            note = recover_checkpoint(ckpt)
            if note:
                print(f"distill: {note}", file=sys.stderr)
    accelerator.wait_for_everyone()
    state = load_state(ckpt)
    if state and state["config_key"] != cfg.trainable_key():
        raise SystemExit(f"{ckpt} was made with different settings {state['config_key']}; use --restart")
    if state and state.get("world", world) != world:
        raise SystemExit(f"{ckpt} was trained by {state['world']} process(es), this run has {world}: the global "
                         "batch and the step count would change meaning; relaunch with the same --num_processes "
                         "or use --restart")
    # checked and read before the base model loads, so a wrong folder fails in a second, not after it
    init_weights = load_init_adapter(cfg) if cfg.init_adapter and not state else None

    import random

    import numpy as np

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base)
    from slim.student.sft import BuildStats, example_key

    chosen = select_rows(rows, meta.get("users"), state, dataset.name)
    examples, stats = [], BuildStats()
    for ds in (dataset, *also):
        mine = [r for r in chosen if str(r.get("dataset") or dataset.name) == ds.name]
        ex, st = build_examples(ds, mine, tokenizer, cfg.max_len, cfg.max_history, prompt=cfg.prompt,
                                primary=dataset.name)
        examples += ex
        stats = stats + st
    train_ex, val_ex = split_examples(examples, cfg.val_fraction)
    if not train_ex:
        raise SystemExit("no training examples: the teacher file has no usable ok rows for this dataset")
    used = {e.user_id for e in examples}
    data_record = {"teacher_rows": [[example_key(r, dataset.name), row_digest(r)] for r in chosen
                                    if example_key(r, dataset.name) in used],
                   "train_examples": len(train_ex), "val_examples": len(val_ex),
                   "val_users": [e.user_id for e in val_ex], **stats.as_dict()}

    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if rank:
        # the LoRA init above is the same on every process (and DDP broadcasts rank 0's anyway); the
        # dropout masks that follow must differ between processes, which see different examples
        torch.manual_seed(cfg.seed * 1_000_003 + rank)
    if state:
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    elif init_weights is not None:
        set_peft_model_state_dict(model, init_weights)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    if state:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))

    micro_per_epoch = len(global_batches(list(range(len(train_ex))), cfg.batch_size, world))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    # The lr schedule spans ``epochs``; --max-steps only stops early, so a short probe run followed by a
    # rerun trains exactly like one uninterrupted run.
    schedule_total = cfg.epochs * steps_per_epoch
    total = min(schedule_total, cfg.max_steps) if cfg.max_steps else schedule_total
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def evaluate() -> float | None:
        """Token-weighted mean loss on the validation users (exact across processes)."""
        if not val_ex:
            return None
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        mine = val_ex[rank::world]
        # the module inside DDP (with accelerate's autocast wrapper): processes may hold different numbers
        # of validation batches, and DDP's forward must not wait for a peer that has none left
        net = accelerator.unwrap_model(model) if world > 1 else model
        with torch.no_grad():
            for i in range(0, len(mine), cfg.batch_size):
                batch = {k: v.to(accelerator.device) for k, v in collate(mine[i : i + cfg.batch_size], pad_id).items()}
                n = (batch["labels"][:, 1:] != -100).sum()
                loss = net(**batch).loss.float()
                sums += torch.stack([loss.double() * n, n.double()])
        sums = accelerator.reduce(sums, "sum")
        model.train()
        return float(sums[0] / sums[1]) if sums[1] > 0 else None

    log_path = out_dir / "log.jsonl"

    def log(row: dict) -> None:
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    step = state["step"] if state else 0
    history = state["history"] if state else {"val": [], "initial_val_loss": None, "train_seconds": 0.0}
    if state:
        saved_order = state.get("data_order")
        if saved_order and saved_order["digest"] != order_digest(
                epoch_order(len(train_ex), cfg.seed, saved_order["epoch"])):
            raise SystemExit(f"{ckpt}: the data order of epoch {saved_order['epoch']} differs from the one the "
                             "checkpoint was trained on (numpy's generator changed?); use --restart")
        if accelerator.is_main_process:
            trim_log(log_path, step)
    if state is None:
        log({"event": "start", "train_examples": len(train_ex), "val_examples": len(val_ex),
             "steps_per_epoch": steps_per_epoch, "total_steps": total, "world": world, "config": asdict(cfg),
             "data": {k: v for k, v in data_record.items() if k not in ("teacher_rows", "val_users")}})
        if initial_eval:
            v0 = evaluate()
            history["initial_val_loss"] = v0
            log({"step": 0, "epoch": 0.0, "val_loss": v0})
    else:
        log({"event": "resume", "step": step, "total_steps": total})

    def snapshot() -> dict:
        epoch = step // steps_per_epoch
        return {"step": step, "world": world, "config_key": cfg.trainable_key(), "config": asdict(cfg),
                "history": history, "data": data_record,
                "data_order": {"epoch": epoch, "in_epoch": step % steps_per_epoch,
                               "digest": order_digest(epoch_order(len(train_ex), cfg.seed, epoch))}}

    def gather_list(mine) -> list:
        """Every process's value, in rank order (a collective: all processes call it)."""
        if world == 1:
            return [mine]
        import torch.distributed as dist

        out = [None] * world
        dist.all_gather_object(out, mine)
        return out

    gather_rng = gather_list

    if state and (ckpt / "rng.json").exists():
        rngs = json.loads((ckpt / "rng.json").read_text())
        restore_rng(rngs[rank])  # dropout continues exactly where the killed run was
    elif state:
        print(f"distill: {ckpt} has no RNG state (written by an older version): dropout masks after the resume "
              "differ from an uninterrupted run's", file=sys.stderr)

    model.train()
    last_loss = None
    stopped = False
    rng_now = capture_rng()  # the RNG state that belongs to position ``step``
    updating = False  # between optimizer.step() and the step counter: no consistent state to save
    try:
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            batches = global_batches(epoch_order(len(train_ex), cfg.seed, epoch), cfg.batch_size, world)
            groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
            for group in groups[in_epoch:]:
                if step >= total:
                    break
                t0 = time.perf_counter()
                rng_now = capture_rng()
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(step, schedule_total, cfg)
                micro = [collate([train_ex[j] for j in gb[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]],
                                 pad_id) for gb in group]
                n_tok = [int((m["labels"][:, 1:] != -100).sum()) for m in micro]
                local_tok = sum(n_tok)
                # token-weighted over the whole global batch: each process scales its loss by
                # world / (tokens of all processes), and DDP's gradient mean then equals the gradient of
                # one process holding the whole global batch
                group_tok = max(1, local_tok if world == 1 else int(accelerator.reduce(
                    torch.tensor([local_tok], device=accelerator.device), "sum").item()))
                loss_sum = 0.0
                for k, (m, n) in enumerate(zip(micro, n_tok)):
                    batch = {key: v.to(accelerator.device) for key, v in m.items()}
                    # gradients sync on the last micro-batch of the accumulation group only
                    sync = k == len(micro) - 1
                    ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                    with ctx:
                        loss = model(**batch).loss
                        accelerator.backward(loss * (n * world / group_tok))
                    loss_sum += float(loss.detach()) * n
                if world > 1:
                    loss_sum = float(accelerator.reduce(torch.tensor([loss_sum], dtype=torch.float64,
                                                                     device=accelerator.device), "sum").item())
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                updating = True
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                rng_now = capture_rng()
                updating = False
                last_loss = loss_sum / group_tok
                if not math.isfinite(last_loss):
                    raise FloatingPointError(f"loss is {last_loss} at step {step}; lower --lr")
                seconds = time.perf_counter() - t0
                history["train_seconds"] += seconds
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": round(last_loss, 5),
                       "lr": optimizer.param_groups[0]["lr"], "tokens": group_tok, "seconds": round(seconds, 3),
                       "peak_rss_gb": round(rss_gb(), 2)}
                if world > 1:
                    row["rank_tokens"] = gather_list(local_tok)
                if check_sync:
                    digests = gather_list(weights_digest(model))
                    row["rank_weights"] = digests
                    if len(set(digests)) != 1:
                        raise RuntimeError(f"step {step}: the processes hold different weights {digests}")
                end_of_epoch = step % steps_per_epoch == 0
                if (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch) \
                        or step == total:
                    v = evaluate()
                    row["val_loss"] = v
                    history["val"].append([step, v])
                history["last_loss"] = last_loss
                log(row)
                if step % cfg.save_every == 0 or end_of_epoch or step == total:
                    rngs = gather_rng(rng_now)
                    if accelerator.is_main_process:
                        save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, snapshot(), rngs)
                accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        stopped = True
        if accelerator.is_main_process:
            if world == 1 and not updating:
                save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, snapshot(), [rng_now])
                print(f"\ninterrupted: checkpoint at step {step} in {ckpt}; rerun the same command to resume",
                      file=sys.stderr)
            else:  # the other processes' RNG states cannot be gathered from a dying job
                last = load_state(ckpt)
                print(f"\ninterrupted: the last checkpoint is at step {last['step'] if last else 0} in {ckpt}; "
                      "rerun the same command to resume", file=sys.stderr)
    if stopped:
        raise SystemExit(130)

    metrics = {}
    if accelerator.is_main_process:
        metrics = write_adapter(cfg, accelerator.unwrap_model(model), history, data_record, step,
                                steps_per_epoch, log_path, adapter_out, meta, gguf)
    accelerator.wait_for_everyone()
    return metrics


