"""Distilled student as ONE quantised GGUF: LoRA merged into the base, then quantised.

Why: the shipped base is Q4_1, and llama.cpp's Q4_1 kernels are slow on this CPU (prompt
evaluation 91 tok/s with the LoRA vs 193 tok/s for a merged q8_0; a merged q4_1 gains only 1.16x,
so the quantisation type matters more than the adapter's extra matmuls). Merging the adapter into
the weights (peft ``merge_and_unload``) lets us choose the type. The price: the merged weights are
re-quantised, so the greedy text can drift from the reference path (transformers + peft);
``bench/student_engines.py`` measures the speed-up and how often the texts agree, and the LoRA
GGUF path stays the exact one. q4_0 loops (7/40 rationales parsed), hence q8_0 on the CLI.

The conversion itself is llama.cpp's ``convert_hf_to_gguf.py`` from the same sdist as the LoRA
converter (:func:`slim.student.gguf_lora.run_converter`), and the quantiser is ``llama_model_quantize`` of
the installed llama-cpp-python, so the file format always matches the loader.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from slim.student.gguf_lora import run_converter

HF_SCRIPT = "convert_hf_to_gguf.py"
# names accepted by --quant; values are llama.cpp's LLAMA_FTYPE_* constants (looked up at run time)
QUANT_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
               "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
               "f16": "LLAMA_FTYPE_MOSTLY_F16", "f32": None}  # f32: no quantisation (exact merge)


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path, out_dir: str | Path) -> Path:
    """peft adapter + base HF folder -> merged fp32 HF folder (config, tokenizer, safetensors)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def quantize_gguf(src: str | Path, out: str | Path, quant: str = "q4_0", threads: int = 1) -> Path:
    import llama_cpp

    if QUANT_TYPES.get(quant) is None:
        raise ValueError(f"unknown quant {quant!r}; choose one of {sorted(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0 or not Path(out).exists():
        raise RuntimeError(f"llama_model_quantize({src} -> {quant}) failed with code {rc}")
    return Path(out)


def merged_gguf(adapter_dir: str | Path, base_dir: str | Path, out: str | Path, quant: str = "q4_0",
                cache_dir: str | Path | None = None) -> Path:
    """Write ``out``: the adapter merged into the base and quantised to ``quant``.

    Steps: merge (peft) -> f32 GGUF (convert_hf_to_gguf.py) -> quantise (llama.cpp). The f32
    intermediate lives in a temporary folder: only the final file is kept.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        hf = merge_adapter(adapter_dir, base_dir, Path(tmp) / "merged-hf")
        f32 = run_converter(HF_SCRIPT, [str(hf.resolve()), "--outtype", "f32"], Path(tmp) / "merged-f32.gguf",
                            cache_dir)
        if quant == "f32":
            f32.replace(out)
        else:
            quantize_gguf(f32, out, quant)
    return out
