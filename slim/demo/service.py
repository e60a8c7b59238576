"""The service behind the Gradio Space: models loaded once, rationales streamed, items ranked.

``app.py`` is only widgets; everything it shows is decided here, so the API, the browser UI, the
tests and the benchmarks exercise one code path.

What a request does (:meth:`DemoService.run`):

1. Resolve the history: a dataset user (history = seq[:-1], the held-out next item = seq[-1], the
   test split of ``slim.data.dataset``) or a custom history (``slim.demo.uploads``: matched catalogue titles).
2. Stream two rationales side by side in threads: the student (SmolLM2-135M in llama.cpp, with the
   newest distilled LoRA, ``slim.artifacts.layout.live_student_adapter``) always runs live. The teacher
   column shows the cached teacher rationale for dataset users when a teacher run wrote one
   (``assets/rationales/<ds>/teacher.jsonl``, ``runs/<ds>/rationales/teacher.jsonl``); otherwise
   (custom histories) the teacher reasons live: an OpenAI-compatible endpoint from the environment
   (``SLIM_TEACHER_BASE_URL``) first, else the local Qwen2.5-Coder-1.5B GGUF in llama.cpp when it is
   installed (``python -m slim_train models --teacher``); without either the column says how to
   enable one.
3. Rank the catalogue with the student's rationale, always with fitted checkpoints when there are
   any (``assets/<ds>/checkpoints``, ``runs/<ds>/checkpoints``):
   - dataset users: the fitted SLIM checkpoint (variant ``slim``, concatenation or the
     zero-initialised gate, whichever fusion's checkpoint validates best) with the highest
     validation NDCG@10, next to the plain backbone of the same kind (variant ``id``);
   - custom histories: ID-agnostic text matching with the fitted projection g_t (variant ``match``,
     no tag): a new history has no user row in an ID-based model;
   - only a dataset without any usable fitted checkpoint falls back to cosine similarity between the
     MiniLM vectors of the rationale and the item texts, labelled *untrained*.
   A checkpoint whose provenance does not match (another dataset version, other item texts or
   encoder) is refused once, with one log line saying why, and the next best one is tried.
   Items already in the history are never recommended (the ``full`` protocol's filter).

How the two models share the CPU (2 cores here): one lock per model, so each model serves one
visitor at a time (a llama.cpp context is not thread-safe, and a second copy would only halve the
speed of both); the two models run *at the same time* on split threads: each decodes with
``SLIM_THREADS`` threads (default 1, i.e. one core each), the student's short prompt pass uses every
core (it sets the student's time to the first token) and the teacher's uses ``SLIM_TEACHER_THREADS``
(default 1), so a slow live teacher never holds the student back. The Space's queue
(``app.py``: ``concurrency_limit`` for the reasoning event, a bounded ``queue``) keeps further
visitors waiting in line, with the page responsive, instead of oversubscribing the cores. Greedy
decoding is deterministic, so answers are memoised per prompt (a small LRU): a repeated request costs
nothing and still shows the same text.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from slim.data.dataset import REPO_ROOT, SequentialDataset, resolve_data_dir
from slim.demo.config import STUDENT_MAX_TOKENS, TEACHER_MAX_TOKENS
from slim.demo.datasets import DatasetsMixin
from slim.demo.generation import GenerationMixin
from slim.demo.models import ModelsMixin
from slim.demo.ranking import RankingMixin
from slim.demo.requests import RequestsMixin
from slim.demo.uploads.history import Catalogue
from slim.lm.reasoners import GenerationParams


class DemoService(DatasetsMixin, RequestsMixin, ModelsMixin, GenerationMixin, RankingMixin):
    """Loads datasets, models and checkpoints lazily, once, behind locks; safe to share across requests.

    One mixin per job (datasets, requests, models, generation, ranking), one state: the
    caches and locks made here."""

    def __init__(self, root: Path = REPO_ROOT, data_dir: str | Path | None = None,
                 student_max_tokens: int = STUDENT_MAX_TOKENS, teacher_max_tokens: int = TEACHER_MAX_TOKENS,
                 n_threads: int | None = None, n_threads_batch: int | None = None):
        self.root = Path(root)
        self.data_dir = resolve_data_dir(data_dir)
        self.student_params = GenerationParams(max_tokens=student_max_tokens)
        self.teacher_params = GenerationParams(max_tokens=teacher_max_tokens)
        self.n_threads = n_threads or int(os.environ.get("SLIM_THREADS", "1"))
        # the prompt pass uses every core (llama.cpp's own default): it sets the time to the first token
        self.n_threads_batch = n_threads_batch or int(os.environ.get("SLIM_THREADS_BATCH", os.cpu_count() or 1))
        self._lock = threading.RLock()
        self._model_locks = {"student": threading.Lock(), "teacher": threading.Lock()}
        self._datasets: dict[str, SequentialDataset] = {}
        self._catalogues: dict[str, Catalogue] = {}
        self._item_text: dict[str, np.ndarray] = {}
        self._modules: dict[tuple[str, str], Any] = {}
        self._students: dict[str, Any] = {}  # adapter path -> reasoner
        self._teacher: Any = None
        self._teacher_checked = False
        self._teacher_error = ""
        self._encoder = None
        self._memo: OrderedDict[str, tuple] = OrderedDict()
        self._candidates: dict[str, Any] = {}  # dataset -> slim.lm.grounding.CandidateIndex
        self.refused: dict[str, str] = {}  # checkpoint path -> why it is not used
