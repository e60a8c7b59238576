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

The training loop is a compact manual accelerate loop rather than ``transformers.Trainer``: the
data order is a pure function of (seed, epoch) (its digest is checked on resume), each process takes
its slice of every global batch, and the checkpoint records the exact optimizer step plus every
process's RNG state (torch, CUDA, numpy, python: the LoRA dropout masks), so a resumed run equals an
uninterrupted one bit for bit. Rows of ``log.jsonl`` after the checkpoint's step (logged before a
kill) are dropped on resume. Checkpoints are swapped in by rename with a completeness marker; a kill
at any point leaves a complete one that the rerun finds (``recover_checkpoint``). Validation loss is
an exact token-weighted sum reduced across processes (no padded duplicate samples).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

from slim.lm.rationale_file import read_rows

from .common import add_common, run_dir

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class DistillConfig:
    """Everything that determines the run; saved in the checkpoint and the adapter's metrics.json."""

    base: str = ""  # HF folder or Hub id; "" = the converted SmolLM2 folder (slim.student.hf_model)
    base_model: str = ""  # Hub id written to adapter_config.json / the card
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (over all reruns); schedule unchanged
    batch_size: int = 4  # per process
    grad_accum: int = 1
    max_len: int = 512
    max_history: int = 20
    val_fraction: float = 0.1
    eval_every: int = 0  # optimizer steps; 0 = at the end of each epoch
    save_every: int = 20
    precision: str = "auto"  # auto | bf16 | fp16 | no (fp32); see resolve_precision
    gradient_checkpointing: bool = False
    seed: int = 0
    # Start from an existing adapter instead of a fresh LoRA (peft folder). This is how one student
    # serves a second domain: the ML-100K student continues on a few hundred Games rationales, which
    # costs minutes of teacher time per hundred users instead of a full per-domain distillation.
    init_adapter: str = ""
    # The student prompt: "plain" (history only; the v2/v3 students) or "grounded" (the dataset's domain
    # and the teacher's candidate shortlist, so the student learns to choose Step 3 among the candidates
    # `reason --step3 grammar --domain dataset` shows it; rows without a grounded Step 3 are skipped).
    prompt: str = "plain"

    def trainable_key(self) -> dict:
        """Fields that must not change when resuming (they change what the checkpoint means).

        ``prompt`` joins the key only when not "plain", so checkpoints written before it existed resume."""
        keep = ("base", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "max_len", "max_history",
                "val_fraction", "seed", "batch_size", "grad_accum", "init_adapter")
        key = {k: getattr(self, k) for k in keep}
        if self.prompt != "plain":
            key["prompt"] = self.prompt
        return key


def add_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    d = DistillConfig()
    p.add_argument("--teacher-file", type=Path, nargs="+", default=None,
                   help="default: <run dir>/rationales/teacher.jsonl; several files (e.g. ML-100K and Games rows) "
                        "train one student on several domains: each row's `dataset` field names its dataset")
    p.add_argument("--prompt", choices=["plain", "grounded"], default=d.prompt,
                   help="student prompt: plain (history only) or grounded (domain + the teacher's candidate "
                        "shortlist; for rows written by `teach --step3 grammar`)")
    p.add_argument("--base", default="", help="student HF folder or Hub id (default: converted SmolLM2-135M-Instruct)")
    p.add_argument("--base-model", default="", help="Hub id recorded in the adapter (default: the student's)")
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    p.add_argument("--target-modules", default=",".join(DEFAULT_TARGETS), help="comma-separated module names")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--max-len", type=int, default=d.max_len)
    p.add_argument("--max-history", type=int, default=d.max_history)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps; 0 = each epoch end")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default=d.precision,
                   help="auto: bf16 on GPUs/CPUs with native bf16, else fp32")
    p.add_argument("--gradient-checkpointing", action="store_true", help="~half the RAM, ~30%% slower")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-initial-eval", action="store_true", help="skip the validation loss before training")
    p.add_argument("--no-gguf", action="store_true", help="do not convert the adapter for llama.cpp")
    p.add_argument("--check-sync", action="store_true", help="after every step, compare a digest of the trainable "
                   "weights across processes (logged as rank_weights; stops on a mismatch)")
    p.add_argument("--init-adapter", default="", help="peft adapter folder to continue from (e.g. assets/student: "
                   "adapt the ML-100K student to another domain); its LoRA shape must match --lora-r/--target-modules")
    p.add_argument("--adapter-out", type=Path, default=None, help="default: <run dir>/distill/adapter")


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    names = {f.name for f in fields(DistillConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["target_modules"] = [m.strip() for m in args.target_modules.split(",") if m.strip()]
    values["seed"] = args.seed
    return DistillConfig(**values)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def _row_digest(row: dict) -> str:
    return hashlib.sha256(row["rationale"].encode()).hexdigest()[:16]


def select_rows(rows: list[dict], n: int | None, state: dict | None, primary: str = "") -> list[dict]:
    """ok ``valid`` rows in teacher-file order, first ``n``; on resume the exact rows of the checkpoint,
    so a teacher file that grew meanwhile does not change the run.

    File order is the teacher's seeded user order for ``teach --users`` (up to the order two pool
    workers finish in); rows of ``teach --eval-users`` follow. Only ``valid`` rows (written from the
    train prefix) are distillation data: the same file also holds the ``test`` rows of the `teacher`
    variant, and one user must map to one row here.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("split", "valid") == "valid"]
    if state is None:
        return ok[:n] if n else ok
    from slim.student.sft import example_key

    by_user = {example_key(r, primary): r for r in ok}
    chosen = []
    for uid, digest in state["data"]["teacher_rows"]:
        r = by_user.get(uid)
        if r is None or _row_digest(r) != digest:
            raise SystemExit(f"checkpoint was trained on teacher row {uid} which is missing or changed; "
                             "rerun with --restart")
        chosen.append(r)
    return chosen


def split_examples(examples, fraction: float):
    from slim.student.sft import is_validation_user

    val = [e for e in examples if is_validation_user(e.user_id, fraction)]
    if fraction > 0 and not val and len(examples) >= 2:
        val = [min(examples, key=lambda e: hashlib.sha256(e.user_id.encode()).hexdigest())]
    val_ids = {e.user_id for e in val}
    return [e for e in examples if e.user_id not in val_ids], val


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def global_batches(order: list[int], per_process: int, world: int) -> list[list[int]]:
    """Global micro-batches of ``per_process * world`` indices; a short last one is filled from the
    start of the order when world > 1 (every process needs a batch, or DDP hangs)."""
    size = per_process * world
    out = [order[i : i + size] for i in range(0, len(order), size)]
    if world > 1 and out and len(out[-1]) < size:
        out[-1] = out[-1] + order[: size - len(out[-1])]
    return out


# ---------------------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------------------
COMPLETE = "COMPLETE"  # written last into a checkpoint folder: everything before it is on disk


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)  # one name so a test can crash the swap between its two renames


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(ckpt: Path, model, optimizer, state: dict, rng: list[dict] | None = None) -> None:
    """Adapter (safetensors) + optimizer state_dict + position + every process's RNG state.

    Written into ``checkpoint.tmp``, marked complete (``COMPLETE`` last), then swapped in with two
    renames (``checkpoint`` -> ``checkpoint.old``, ``.tmp`` -> ``checkpoint``). A kill at any point
    leaves at least one complete folder, and :func:`recover_checkpoint` picks it (the newest).
    """
    import torch

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if rng is not None:
        (tmp / "rng.json").write_text(json.dumps(rng) + "\n")
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    (tmp / COMPLETE).write_text(f"{state['step']}\n")
    _fsync_dir(tmp)
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        _rename(ckpt, old)
    _rename(tmp, ckpt)
    _fsync_dir(ckpt.parent)
    shutil.rmtree(old, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return (folder / COMPLETE).exists() and (folder / "state.json").exists()


def recover_checkpoint(ckpt: Path) -> str | None:
    """Make ``ckpt`` the newest complete checkpoint among ``ckpt``, ``.tmp`` and ``.old``; say what was done.

    States a kill can leave: ``tmp`` half-written (ignored), ``old`` + complete ``tmp`` (killed between
    the two renames: ``tmp`` is the newest), ``old`` + ``ckpt`` (killed before the cleanup). A
    checkpoint from before the ``COMPLETE`` marker existed counts as complete when it is ``ckpt`` itself.
    """
    tmp, old = ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")
    note = None
    if tmp.exists() and _complete(tmp):  # a complete tmp is always the newest
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            _rename(ckpt, old)
        _rename(tmp, ckpt)
        note = f"resuming from the complete {tmp.name} (the swap into {ckpt.name} was interrupted)"
    elif not ckpt.exists() and old.exists() and _complete(old):
        _rename(old, ckpt)
        note = f"resuming from {old.name} (the swap into {ckpt.name} was interrupted)"
    if ckpt.exists():
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return note


def load_state(ckpt: Path) -> dict | None:
    f = ckpt / "state.json"
    return json.loads(f.read_text()) if f.exists() else None


def capture_rng() -> dict:
    """This process's RNG states (torch CPU, CUDA, numpy, python) as JSON-able values."""
    import base64
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
           "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
           "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(rng: dict) -> None:
    import base64
    import random

    import numpy as np
    import torch

    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rng["torch"])), dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in rng["cuda"]])


def order_digest(order: list[int]) -> str:
    return hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16]


def trim_log(log_path: Path, step: int) -> int:
    """Drop log rows of steps after ``step`` (logged before a kill, redone after the resume); returns how many.

    Without this a resumed run's log holds the redone steps twice, and the card's seconds_per_step and
    curve count them twice.
    """
    if not log_path.exists():
        return 0
    lines = log_path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        if not line.endswith("\n"):
            continue  # torn last line
        row = json.loads(line)
        if "event" not in row and row.get("step", 0) > step:
            continue
        keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        tmp = log_path.with_name(log_path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, log_path)
    return dropped


def lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    """Linear warmup then linear decay to 10 %; a pure function of the step, so resuming (even
    with a different --max-steps) needs no scheduler state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * max(0.1, 1.0 - 0.9 * min(1.0, frac))


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    return {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_precision(precision: str, flags: set[str] | None = None) -> str:
    """``auto`` -> bf16 autocast only where bf16 matmuls are native (CUDA with bf16; CPUs with
    AVX512-BF16 or AMX), else fp32.

    Measured (``bench/distill_precision.py``, one LoRA forward + backward of the student, 1 x 256 tokens,
    2 threads): on an AMD EPYC with avx512_bf16, bf16 autocast 1.08 s vs fp32 1.38 s (0.78x). On an
    AVX2-only EPYC, bf16 autocast was 15x slower than fp32 (42.9 s vs 2.6 s for 1 x 64 tokens): its bf16
    matmuls are emulated. torch's capability string says "AVX512" without saying whether the BF16
    extension is there, so the CPU's flags decide where /proc/cpuinfo exists.
    """
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    flags = cpu_flags() if flags is None else flags
    if flags:
        return "bf16" if flags & NATIVE_BF16_FLAGS else "no"
    cap = torch.backends.cpu.get_cpu_capability()
    return "bf16" if cap.startswith("AMX") else "no"


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def make_accelerator(precision: str):
    """``Accelerator(mixed_precision=precision)``, also when this process already made one with another
    precision.

    accelerate keeps one process-wide state and refuses to change its precision. Under `accelerate launch`
    each process trains once, but a test session or a notebook may call ``train`` twice, e.g. ``auto``
    (bf16 on a CPU with native bf16) and then ``no``; the second call then drops the old state (accelerate's own
    ``_reset_state``, which its test-suite uses for the same reason) instead of failing.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    kwargs = {"mixed_precision": precision}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator_device():
        # several CPU processes (`accelerate launch --multi_gpu --num_processes N` or torchrun on a box
        # without GPUs): accelerate makes a gloo process group only when told the run is on the CPU
        kwargs["cpu"] = True
    try:
        return Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def _has_accelerator_device() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


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
            for suffix in ("", ".tmp", ".old"):
                shutil.rmtree(ckpt.with_name(ckpt.name + suffix), ignore_errors=True)
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
    data_record = {"teacher_rows": [[example_key(r, dataset.name), _row_digest(r)] for r in chosen
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
        metrics = finish(cfg, accelerator.unwrap_model(model), tokenizer, history, data_record, step,
                         steps_per_epoch, log_path, adapter_out, meta, gguf)
    accelerator.wait_for_everyone()
    return metrics


def weights_digest(model) -> str:
    """sha256 of the trainable tensors' bytes: equal on every process exactly when DDP kept them in sync."""
    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.removeprefix("module.").encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def finish(cfg: DistillConfig, model, tokenizer, history: dict, data_record: dict, step: int,
           steps_per_epoch: int, log_path: Path, adapter_out: Path, meta: dict, gguf: bool) -> dict:
    """Write the adapter folder: safetensors + config (base = the Hub id) + metrics.json + card."""
    from slim.student.card import build_card, curve_summary

    tmp = adapter_out.with_name(adapter_out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    conf = json.loads((tmp / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = cfg.base_model or conf.get("base_model_name_or_path")
    (tmp / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    log = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()] if log_path.exists() else []
    vals = [(s, v) for s, v in history["val"] if v is not None]
    best = min(vals, key=lambda sv: sv[1]) if vals else (None, None)
    train_rows = [r for r in log if "loss" in r]
    metrics = {
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
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    build_card(metrics).save(tmp / "README.md")
    loss_curve_png(metrics, tmp / "loss_curve.png")
    shutil.rmtree(adapter_out, ignore_errors=True)
    tmp.rename(adapter_out)
    if gguf:
        try:
            from slim.student.gguf_lora import convert_lora

            convert_lora(adapter_out, cfg.base, adapter_out / "adapter.gguf")
        except Exception as e:  # noqa: BLE001 - the adapter is done; the fast path can be converted later
            print(f"warning: GGUF conversion failed ({type(e).__name__}: {e}); the peft adapter is complete. "
                  f"Retry: python -c \"from slim.student.gguf_lora import convert_lora; convert_lora('{adapter_out}', "
                  f"'{cfg.base}')\"", file=sys.stderr)
    return metrics


def loss_curve_png(metrics: dict, out: Path) -> Path | None:
    """Train and held-out loss against the optimizer step, from metrics.json's ``curve``.

    The numbers are in metrics.json already; the picture is what a reader checks first
    (over-fitting shows as the held-out curve turning up while the train curve keeps falling).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = metrics.get("curve") or []
    train = [(r["step"], r["loss"]) for r in curve if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in curve if r.get("val_loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for points, label, style in ((train, "train loss", "-"), (val, "held-out loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    data = metrics.get("data", {})
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (rationale tokens)",
           title=f"LoRA distillation: {data.get('train_examples', '?')} train / "
                 f"{data.get('val_examples', '?')} held-out users")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


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


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill`/`timeout` then saves a checkpoint like Ctrl-C does


def main(args: argparse.Namespace) -> None:
    import signal

    import torch

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)

    from slim.data.dataset import load_dataset
    from slim.lm.weights import STUDENT_NAME

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
    rows = []
    for teacher_file in teacher_files:
        if not teacher_file.exists():
            raise SystemExit(f"{teacher_file} does not exist. Fix: python -m slim_train teach --dataset {args.dataset}")
        rows += read_rows(teacher_file)[0]  # file order, as the teacher wrote them
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
