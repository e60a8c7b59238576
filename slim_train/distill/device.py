"""Where the distillation runs: precision by the CPU's flags, the accelerate handle, and what to report of the box."""
from __future__ import annotations

import os
import resource
from pathlib import Path


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
    """Peak resident memory of this process so far (the card reports it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def hardware() -> str:
    """One line naming the devices the run trained on (recorded in metrics.json and the card)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


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
