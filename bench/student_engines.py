"""Which llama.cpp build of the distilled student is fastest, and how far its text drifts.

    OMP_WAIT_POLICY=PASSIVE python bench/student_engines.py --users 8 --threads 1 \
        --merged runs/merged/student-merged-q4_0.gguf runs/merged/student-merged-q8_0.gguf

Engines, same users (ML-100K validation histories), same greedy decoding, one run:
  * ``lora``: the shipped Q4_1 base + ``assets/student/adapter.gguf`` (the exact path: it reproduces
    transformers + peft token for token, tests/test_student.py);
  * each ``--merged`` file: LoRA merged into the weights and re-quantised
    (``python -m slim_train merge``).
Prints s/rationale, tokens/s, the speed-up over ``lora`` (a ratio within this run) and the share
of rationales whose text is identical to the ``lora`` output plus the mean token-level agreement
(longest common prefix / length), so speed is never reported without its fidelity cost.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent

from slim.data.dataset import load_dataset
from slim.lm.prompts import student_messages
from slim.lm.llama_reasoner import LlamaCppReasoner
from slim.lm.reasoners import GenerationParams
from slim.lm.weights import student_gguf_path


def run(reasoner: LlamaCppReasoner, prompts, params) -> tuple[list[str], float, int]:
    reasoner.generate(prompts[:1], GenerationParams(max_tokens=8))  # warm-up: page the weights in
    t0 = time.perf_counter()
    gens = reasoner.generate(prompts, params)
    return [g.text for g in gens], time.perf_counter() - t0, sum(g.completion_tokens for g in gens)


def prefix_agreement(a: str, b: str) -> float:
    wa, wb = a.split(), b.split()
    n = next((i for i, (x, y) in enumerate(zip(wa, wb)) if x != y), min(len(wa), len(wb)))
    return n / max(len(wa), len(wb), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--adapter", default=str(ROOT / "assets" / "student" / "adapter.gguf"))
    ap.add_argument("--merged", nargs="*", default=[], help="merged + quantised student GGUFs")
    args = ap.parse_args()

    ds = load_dataset("ml-100k")
    prompts = [student_messages(ds.titles(ds.history(u, "valid"))) for u in range(args.users)]
    params = GenerationParams(max_tokens=args.max_tokens)
    engines = [("lora (Q4_1 + LoRA GGUF)", student_gguf_path(), args.adapter)]
    engines += [(f"merged {Path(m).name}", m, None) for m in args.merged]
    rows, ref = [], None
    for name, model, lora in engines:
        texts, secs, toks = run(LlamaCppReasoner(model, lora, n_threads=args.threads), prompts, params)
        ref = ref or texts
        same = sum(t == r for t, r in zip(texts, ref)) / len(texts)
        agree = sum(prefix_agreement(t, r) for t, r in zip(texts, ref)) / len(texts)
        rows.append((name, secs / len(prompts), toks / secs, same, agree))
    base = rows[0][1]
    print(f"ML-100K, {args.users} users (valid histories), llama.cpp {args.threads} thread(s), greedy, "
          f"max {args.max_tokens} tokens")
    for name, spr, tps, same, agree in rows:
        print(f"{name:42s} {spr:6.2f} s/rationale {tps:6.1f} tok/s  speed-up {base / spr:4.2f}x  "
              f"identical {100 * same:5.1f}%  word-prefix agreement {100 * agree:5.1f}%")


if __name__ == "__main__":
    main()
