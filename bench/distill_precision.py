"""Is `distill --precision auto` right on this CPU? One LoRA forward + backward of the student, fp32 vs
bf16 autocast, in the same process.

    OMP_WAIT_POLICY=PASSIVE python bench/distill_precision.py --threads 2

`slim_train.distill.device.resolve_precision` picks bf16 only where the CPU flags say bf16 matmuls are native
(avx512_bf16, amx_bf16): bf16 autocast was 15x slower than fp32 on an AVX2-only box (its docstring).
This script checks the choice on the box at hand.
"""
from __future__ import annotations

import argparse
import time



def step_seconds(model, batch, precision: str, reps: int) -> float:
    """Median wall time of forward + backward (LoRA grads only), after one warm-up step."""
    import torch

    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=256, help="sequence length of the one-example batch")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slim.student.hf_model import student_hf_path
    from slim_train.distill.config import DistillConfig
    from slim_train.distill.device import NATIVE_BF16_FLAGS, cpu_flags, resolve_precision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DistillConfig()
    model = AutoModelForCausalLM.from_pretrained(str(student_hf_path()), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                             target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    flags = cpu_flags()
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 flags: {sorted(flags & NATIVE_BF16_FLAGS) or 'none'}; "
          f"auto resolves to {resolve_precision('auto')!r}")
    fp32 = step_seconds(model, batch, "no", args.reps)
    bf16 = step_seconds(model, batch, "bf16", args.reps)
    print(f"1 x {args.tokens} tokens, {args.threads} threads, median of {args.reps}: "
          f"fp32 {fp32:.2f} s, bf16 autocast {bf16:.2f} s -> bf16 / fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
