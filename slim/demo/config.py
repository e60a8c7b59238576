"""The Space's settings: datasets offered, token budgets (overridable from the environment), fixed texts."""
from __future__ import annotations

import os


PAPER_URL = "https://arxiv.org/abs/2403.04260"


DEFAULT_DATASET = "ml-100k"


OPTIONAL_DATASETS = ("amazon-video-games", "amazon-industrial-scientific")  # offered when their files exist


RAW_FILES = {
    "ml-100k": ("ml-100k.inter", "ml-100k.item"),
    "amazon-video-games": ("Games.item", "Games-6k.test.inter"),
    "amazon-industrial-scientific": ("Scientific.item.json", "Scientific.inter.json"),
}


TOP_K = 10


STUDENT_MAX_TOKENS = int(os.environ.get("SLIM_STUDENT_MAX_TOKENS", "200"))  # = slim_train reason default


TEACHER_MAX_TOKENS = int(os.environ.get("SLIM_TEACHER_MAX_TOKENS", "320"))  # = slim_train teach default


TEACHER_HELP = (
    "No teacher is configured for live reasoning. To enable it, install the local teacher, "
    "Qwen2.5-Coder-1.5B-Instruct (GGUF, 1.1 GB, run in llama.cpp): `python -m slim_train models --teacher`; "
    "or set `SLIM_TEACHER_BASE_URL` (any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, "
    "`python -m llama_cpp.server`), `SLIM_TEACHER_MODEL` and `OPENAI_API_KEY`. Then restart the app."
)


TEACHER_DISABLED = "The local teacher is switched off (`SLIM_TEACHER_LOCAL=0`); unset it to reason live."
