"""The distillation checkpoint: adapter, optimizer, position and every process's RNG state, swapped in atomically.

A kill at any point leaves a complete checkpoint that the rerun finds (``recover_checkpoint``), and
the RNG states make a resumed run equal an uninterrupted one bit for bit (the LoRA dropout masks).
Log rows written after the checkpoint's step (before a kill) are dropped on resume (``trim_log``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

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


def remove_checkpoint(ckpt: Path) -> None:
    """``--restart``: the checkpoint and any half-swapped copies of it go."""
    for suffix in ("", ".tmp", ".old"):
        shutil.rmtree(ckpt.with_name(ckpt.name + suffix), ignore_errors=True)


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
    """Set this process's RNG states back to what :func:`capture_rng` recorded."""
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
