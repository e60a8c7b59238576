"""peft LoRA adapter -> GGUF LoRA, so the student runs in llama.cpp (the fast CPU path).

llama.cpp's own ``convert_lora_to_gguf.py`` does the conversion (tensor renaming, the q/k
permutation of llama-family models, alpha metadata). We do not vendor it: it ships inside the
llama-cpp-python *source distribution* of the version we run, so at run time we fetch that sdist
with pip (the ordinary registry client), extract only the converter (its top-level scripts, the
``conversion/`` package and its matching ``gguf-py``) into the cache, and run it in a subprocess.
Using the converter from the same llama.cpp commit as the installed library keeps the file format
and the loader in step.

Result: ``Llama(model_path=student.gguf, lora_path=adapter.gguf)`` reproduces the transformers +
peft output of ``(student HF folder, adapter)`` (tests/test_student.py).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from slim.lm.weights import CACHE_DIR

SCRIPT = "convert_lora_to_gguf.py"
_KEEP = re.compile(r"[^/]+\.py|LICENSE|(conversion|gguf-py)/.+")


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError as e:
        raise RuntimeError("llama-cpp-python is not installed; the converter is taken from its sdist") from e


def converter_dir(version: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Folder holding ``convert_lora_to_gguf.py`` of llama-cpp-python ``version`` (fetched once)."""
    version = version or llama_cpp_version()
    root = (Path(cache_dir) if cache_dir else CACHE_DIR) / "llama-cpp-converter" / version
    if (root / SCRIPT).exists() and (root / "conversion").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        sdist = _download_sdist(version, Path(tmp))
        staging = Path(tmp) / "staging"
        with tarfile.open(sdist) as tar:
            prefix = next(m.name for m in tar.getmembers() if m.name.endswith(f"vendor/llama.cpp/{SCRIPT}"))
            prefix = prefix[: -len(SCRIPT)]
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and _KEEP.fullmatch(rel) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(staging, members=members, filter="data")
        (staging / "SOURCE.json").write_text(json.dumps(
            {"package": "llama-cpp-python", "version": version, "sdist": sdist.name,
             "path_in_sdist": prefix + SCRIPT}, indent=2) + "\n")
        if root.exists():  # a half-finished earlier attempt
            import shutil

            shutil.rmtree(root)
        staging.rename(root)
    return root


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download produced no llama-cpp-python sdist in {dest}")
    return found[0]


def convert_lora(adapter_dir: str | Path, base_dir: str | Path, out: str | Path | None = None,
                 outtype: str = "f32", cache_dir: str | Path | None = None) -> Path:
    """Convert a peft adapter folder to ``adapter.gguf`` (default: inside ``adapter_dir``).

    ``base_dir`` is the HF folder the adapter was trained on (only its config is read).
    f32 by default: the adapter is tiny (a few MB) and f32 keeps llama.cpp's output identical to
    the reference path.
    """
    # absolute: the converter runs with cwd=its own folder, so relative paths would point there
    adapter_dir, base_dir = Path(adapter_dir).resolve(), Path(base_dir).resolve()
    out = Path(out).resolve() if out else adapter_dir / "adapter.gguf"
    return run_converter(SCRIPT, ["--base", str(base_dir), "--outtype", outtype, str(adapter_dir)], out, cache_dir)


def run_converter(script: str, args: list[str], out: Path, cache_dir: str | Path | None = None) -> Path:
    """Run one of llama.cpp's converter scripts (``--outfile out`` appended) in a subprocess.

    Paths in ``args`` and ``out`` must be absolute: the script runs with its own folder as cwd, so
    that it imports the ``conversion`` package and ``gguf-py`` of the same llama.cpp commit.
    """
    script_dir = converter_dir(cache_dir=cache_dir)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(script_dir)}
    cmd = [sys.executable, str(script_dir / script), *args, "--outfile", str(out)]
    res = subprocess.run(cmd, env=env, cwd=script_dir, capture_output=True, text=True)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"{script} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return out
