"""The service behind the Gradio Space: models loaded once, rationales streamed, items ranked.

``app.py`` is only widgets; everything it shows is decided here, so the API, the browser UI, the
tests and the benchmarks exercise one code path.

What a request does (:meth:`DemoService.run`):

1. Resolve the history: a dataset user (history = seq[:-1], the held-out next item = seq[-1], the
   test split of ``slim.data``) or a custom history (``slim.uploads``: matched catalogue titles).
2. Stream two rationales side by side in threads: the student (SmolLM2-135M in llama.cpp, with the
   newest distilled LoRA, ``slim.artifacts.live_student_adapter``) always runs live. The teacher
   column shows the cached teacher rationale for dataset users when a teacher run wrote one
   (``assets/rationales/<ds>/teacher.jsonl``, ``runs/<ds>/rationales/teacher.jsonl``); otherwise
   (custom histories) the teacher reasons live: an OpenAI-compatible endpoint from the environment
   (``SLIM_TEACHER_BASE_URL``) first, else the local Qwen2.5-Coder-1.5B GGUF in llama.cpp when it is
   installed (``python -m slim_train models --teacher``); without either the column says how to
   enable one.
3. Rank the catalogue with the student's rationale, always with fitted checkpoints when there are
   any (``assets/<ds>/checkpoints``, ``runs/<ds>/checkpoints``):
   - dataset users: the fitted SLIM checkpoint (variant ``slim``) with the highest validation
     NDCG@10, next to the plain backbone of the same kind (variant ``id``);
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

import json
import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from .artifacts import REPORTED_USER_SAMPLES, adapter_prompt, live_student_adapter
from .data import REPO_ROOT, SequentialDataset, load_dataset, resolve_data_dir, sample_users
from .prompts import _STEP_RE, parse_steps, prompt_builder, prompt_hash, student_messages
from .reasoners import LLAMA_SERVER_REPEAT_PENALTY, GenerationParams
from .uploads import (Catalogue, History, UploadError, check_text, history_from_file,
                      history_from_picks, history_from_text, history_from_titles, loads_json, shown)

PAPER_URL = "https://arxiv.org/abs/2403.04260"
DEFAULT_DATASET = "ml-100k"
OPTIONAL_DATASETS = ("amazon-video-games", "amazon-industrial-scientific")  # offered when their files exist
# the raw files each loader of slim.data reads (ML-100K is downloaded from GroupLens when absent;
# there is no downloader for the Amazon sets: their files are placed under <data dir>/<name>/raw)
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

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# display of one rationale column
# ---------------------------------------------------------------------------------------
@dataclass
class Column:
    """One rationale column's state; ``markdown()`` is what the page shows."""

    role: str  # "teacher" | "student"
    model: str = ""
    text: str = ""
    status: str = "waiting"  # waiting | running | done | cached | unavailable | error
    note: str = ""  # persistent remark (cached, not distilled, error)
    waiting: str = ""  # transient remark while queued behind another request
    started: float | None = None
    first_token_s: float | None = None
    seconds: float = 0.0
    tokens: int = 0
    from_memory: bool = False  # replayed from the per-prompt memo: no timing to report
    step3_items: list[int] = field(default_factory=list)  # grounded Step 3: the catalogue items it names

    @property
    def tok_per_s(self) -> float | None:
        if self.from_memory:
            return None
        gen = self.seconds - (self.first_token_s or 0.0)
        return self.tokens / gen if self.tokens > 1 and gen > 0 else None

    def header(self) -> str:
        parts = [f"**{_md_escape(self.model)}**" if self.model else f"**{self.role}**"]
        if self.status in ("running", "done") and not self.from_memory:
            parts.append(f"{self.seconds:.1f} s")
            if self.first_token_s is not None:
                parts.append(f"first token {self.first_token_s:.2f} s")
            if self.tok_per_s:
                parts.append(f"{self.tok_per_s:.0f} tok/s")
            parts.append(f"{self.tokens} tokens")
        if self.status == "running":
            parts.append("streaming…")
        if self.waiting:
            parts.append(self.waiting)
        if self.note:  # may quote an endpoint's error text: shown as text
            parts.append(_md_escape(self.note))
        return " · ".join(parts)

    def markdown(self) -> str:
        body = format_steps(self.text) if self.text else ("_waiting…_" if self.status in ("waiting", "running") else "")
        return f"{self.header()}\n\n{body}".strip()


def format_steps(text: str) -> str:
    """Rationale text -> Markdown with each "Step k" on its own separated block (works on partial text)."""
    marks = list(_STEP_RE.finditer(text))
    if not marks:
        return _md_escape(text)
    out = []
    pre = text[: marks[0].start()].strip()
    if pre:
        out.append(_md_escape(pre))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end():end].strip().strip("*").strip()
        out.append(f"#### Step {m.group(1)}\n{_md_escape(body)}")
    return "\n\n---\n\n".join(out)


def _md_escape(text: str) -> str:
    """Model text is shown as text: no raw HTML, no headings that could mimic the page."""
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"(?m)^(\s*)#", r"\1\\#", text)


# ---------------------------------------------------------------------------------------
# scorers
# ---------------------------------------------------------------------------------------
@dataclass
class Ranked:
    """One top-K list and where it came from."""

    variant: str  # label shown in the table
    item_idx: list[int]
    scores: list[float]
    note: str = ""
    target_rank: int | None = None  # 1-based rank of the held-out item in the full (filtered) ranking


MATCH_LABEL = "SLIM text matching (ID-agnostic)"  # the fitted `match` projection
UNTRAINED_LABEL = "SLIM text matching (untrained: cosine)"  # no usable fitted checkpoint


def _slim_label(r: Ranked) -> str:
    """``r.variant`` when it is a fitted SLIM backbone's label ("SLIM (SASRec)"), else ""."""
    return r.variant if re.fullmatch(r"SLIM \(\w+\)", r.variant) else ""


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def rationale_text(text: str) -> str:
    """The text encoded as the user's rationale vector, built exactly as for the fitted models."""
    from .rationales import rationale_text as row_text

    parsed = parse_steps(text)
    return row_text({"status": "ok", "steps": parsed.steps, "rationale": text}) or ""


@dataclass
class Checkpoint:
    path: Path
    record: dict
    backbone: str
    variant: str
    tag: str
    seed: int
    valid_ndcg10: float

    @property
    def label(self) -> str:
        names = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "srgnn": "SRGNN"}
        b = names.get(self.backbone, self.backbone)
        return {"id": b, "text": f"{b}+", "teacher": f"SLIM- ({b})", "slim": f"SLIM ({b})",
                "match": "SLIM text matching"}.get(self.variant, f"{b}-{self.variant}")


def find_checkpoints(roots: Sequence[Path]) -> list[Checkpoint]:
    """Complete checkpoints (``config.json`` with complete=true) under the given checkpoint dirs."""
    out = []
    for root in roots:
        if not root.is_dir():
            continue
        for cfg_path in sorted(root.glob("*/config.json")):
            try:
                record = json.loads(cfg_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not record.get("complete") or not (cfg_path.parent / "model.safetensors").exists():
                continue
            c = record["key"]["config"]
            out.append(Checkpoint(cfg_path.parent, record, c["backbone"], c["variant"], c.get("tag", ""),
                                  int(c["seed"]), float(record.get("valid_metrics", {}).get("NDCG@10", -1.0))))
    return out


def load_module(ck: Checkpoint, dataset: SequentialDataset, item_text: np.ndarray | None):
    """Rebuild a fitted module from its directory, checking the dataset and item-text provenance.

    Not ``train.load_fitted``: that also checks the hash of the *training* users' rationale
    matrix, which a demo scoring one (possibly new) user cannot and need not reproduce.
    """
    from safetensors.torch import load_file

    from .metrics import dataset_fingerprint
    from .recommenders import build_model
    from .artifacts import text_inputs_key
    from .recommenders.train import text_inputs_check

    key = ck.record["key"]
    if isinstance(key.get("item_text"), str) and not key["item_text"].startswith("rounded:"):
        raise ValueError(f"{ck.path.name}: checkpoint format {key.get('format')} keys its item texts by the bytes "
                         "of the vectors, which differ across machines; this code keys them by the texts and "
                         "encoder (format 2). Fix: refit it (slim_eval --refit) or ship a format-2 checkpoint")
    if key["dataset"]["fingerprint"] != dataset_fingerprint(dataset):
        raise ValueError(f"{ck.path.name}: trained on a different version of {dataset.name}")
    # the item side only: the rationale inputs of the training users stay as recorded
    now = {**key, "item_text": text_inputs_key(item_text) if key.get("item_text") else None}
    text_inputs_check(ck.record, now, item_text, None, ck.path.name)
    state = load_file(str(ck.path / "model.safetensors"))
    # the rationale vector size is the input width of g_l' (UserTextFusion.g_l), not of g_f'
    g_l = state.get("user_fusion.g_l.weight")
    udim = int(g_l.shape[1]) if g_l is not None else None
    c = key["config"]
    model = build_model(c["backbone"], c["variant"], dataset.n_items, c["dim"], c["max_len"], c["layers"],
                        c["heads"], c["dropout"], item_text=item_text,
                        user_text_dim=udim if c["variant"] in ("teacher", "slim") else None,
                        fusion=c.get("fusion", "concat"))
    model.load_state_dict(state)
    model.eval()
    return model


class CheckpointRefused(ValueError):
    """A fitted checkpoint the demo will not use (its provenance does not match the inputs here)."""


@dataclass
class DatasetStatus:
    name: str
    offered: bool
    reason: str  # why it is not offered (or a remark when it is)
    student: str  # the shipped adapter's path relative to the root, "" when absent
    rationales: list[str]
    checkpoints: int
    slim_checkpoints: int


# ---------------------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------------------
@dataclass
class Request:
    dataset: str
    titles: list[str]  # history titles, oldest first (catalogue titles only)
    item_idx: list[int]
    user_id: str | None = None  # set for dataset users
    user_idx: int | None = None
    target: int | None = None  # the held-out next item (dataset users)
    history: History | None = None  # set for custom histories (matched/dropped/notices)
    full_history: list[int] = field(default_factory=list)  # items never recommended

    @property
    def is_dataset_user(self) -> bool:
        return self.user_idx is not None


@dataclass
class Update:
    """What the page shows at one moment of a request."""

    teacher: Column
    student: Column
    ranked: list[Ranked] = field(default_factory=list)
    info: str = ""
    done: bool = False


def local_teacher_installed() -> bool:
    """The local teacher GGUF is assembled in the cache, or all its part packages are installed
    (``python -m slim_train models --teacher`` does both); nothing is installed or read here."""
    from .weights import CACHE_DIR, TEACHER_GGUF

    out = CACHE_DIR / TEACHER_GGUF.name
    if out.exists() and (not TEACHER_GGUF.size or out.stat().st_size == TEACHER_GGUF.size):
        return True
    return all(TEACHER_GGUF.part_path(n) is not None for n in range(1, TEACHER_GGUF.parts + 1))


@dataclass
class Grounding:
    """A grounded Step 3 for one request: the shortlist (item indices, display titles) and the config."""

    shortlist: list[int]
    titles: list[str]
    cfg: Any  # slim.grounding.GroundingConfig


def grounds(reasoner) -> bool:
    """The in-process llama.cpp model (slim.reasoners.LlamaCppReasoner) takes a grammar: Step 3 is grounded."""
    return callable(getattr(reasoner, "complete", None))


class _StreamedSteps:
    """The reasoner as ``slim.grounding.grounded_generation`` calls it, with each piece shown as it comes:
    the free Steps 1-2 stream token by token, then every grammar-bound Step-3 item appears when chosen."""

    def __init__(self, reasoner, on_delta: Callable[[str], None], on_item: Callable[[str], None]):
        self.reasoner, self.on_delta, self.on_item = reasoner, on_delta, on_item
        self.model_name = getattr(reasoner, "model_name", "teacher")

    def complete(self, messages, prefix: str, params=None, stop=(), grammar=None, reset: bool = False):
        if grammar is None and not prefix and hasattr(self.reasoner, "_llm"):
            return _stream_head(self.reasoner, messages, params, stop, self.on_delta)
        gen = self.reasoner.complete(messages, prefix, params, stop=stop, grammar=grammar, reset=reset)
        (self.on_item if grammar is not None else self.on_delta)(gen.text)
        return gen


def _stream_head(reasoner, messages, params, stop, on_delta):
    """``LlamaCppReasoner.complete(messages, "", params, stop=stop, reset=True)``, streamed: the same
    rendered chat prompt and decoding, each new piece passed to ``on_delta``."""
    from .reasoners import Generation, _penalty

    llm = reasoner._llm
    rendered = reasoner._chat_formatter()(messages=messages)
    t0 = time.perf_counter()
    text, n, finish = "", 0, "stop"
    with reasoner._lock:
        llm.reset()
        tokens = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        stops = [*(rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []),
                 *stop]
        for chunk in llm.create_completion(prompt=tokens, max_tokens=params.max_tokens, temperature=params.temperature,
                                           top_p=params.top_p, seed=params.seed, stop=stops or None,
                                           repeat_penalty=_penalty(params), stream=True):
            choice = chunk["choices"][0]
            if choice.get("text"):
                text += choice["text"]
                n += 1
                on_delta(choice["text"])
            finish = choice.get("finish_reason") or finish
    return Generation(text, n, len(tokens), time.perf_counter() - t0, reasoner.model_name, finish)


class DemoService:
    """Loads datasets, models and checkpoints lazily, once, behind locks; safe to share across requests."""

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
        self._candidates: dict[str, Any] = {}  # dataset -> slim.grounding.CandidateIndex
        self.refused: dict[str, str] = {}  # checkpoint path -> why it is not used

    # ---- datasets ------------------------------------------------------------------------
    def dataset_status(self, name: str) -> "DatasetStatus":
        """Whether ``name`` is offered in the picker, what ships for it and, if it is not, why."""
        raw = self.data_dir / name / "raw"
        missing = [f for f in RAW_FILES.get(name, ()) if not (raw / f).exists()]
        adapter = self.adapter_path(name)
        rat_dirs = [d / "rationales" for d in self.run_dirs(name)] + [self.root / "assets" / "rationales" / name]
        rationales = [str(p.relative_to(self.root)) for d in rat_dirs if d.is_dir() for p in sorted(d.glob("*.jsonl"))]
        cks = self.checkpoints(name)
        st = DatasetStatus(name, True, "", str(adapter.relative_to(self.root)) if adapter.exists() else "",
                           rationales, len(cks), sum(c.variant == "slim" for c in cks))
        if name == DEFAULT_DATASET:
            if missing:
                st.reason = f"downloaded from GroupLens on first use into `{raw}`"
            return st
        if missing:
            st.offered = False
            st.reason = (f"raw files not found in `{raw}` ({', '.join(missing)}); there is no downloader for "
                         "the Amazon data: place the files there (or point `SLIM_DATA_DIR` at them) and restart")
        elif not st.student or not (st.rationales or st.checkpoints):
            st.offered = False
            st.reason = ("its artefacts do not ship in this checkout: "
                         + ", ".join(w for w, ok in ((f"student adapter `{live_student_adapter(name)}`", st.student),
                                                     (f"rationales `assets/rationales/{name}/`", st.rationales or st.checkpoints))
                                     if not ok))
        return st

    def available_datasets(self) -> list[str]:
        """ML-100K always (downloaded from GroupLens when absent); the Amazon sets when their raw files
        and shipped artefacts (student adapter + rationales or checkpoints) are there."""
        return [DEFAULT_DATASET] + [n for n in OPTIONAL_DATASETS if self.dataset_status(n).offered]

    def datasets_markdown(self) -> str:
        """The About tab's table: every known dataset, what ships for it, and why one is not offered."""
        lines = ["| dataset | in the picker | student adapter | rationales | fitted checkpoints |",
                 "|---|---|---|---|---|"]
        notes = []
        for name in (DEFAULT_DATASET, *OPTIONAL_DATASETS):
            st = self.dataset_status(name)
            lines.append(f"| {name} | {'yes' if st.offered else 'no'} | {f'`{st.student}`' if st.student else '-'} | "
                         f"{len(st.rationales)} file(s) | {st.checkpoints} ({st.slim_checkpoints} SLIM) |")
            if st.reason:
                notes.append(f"- **{name}**{'' if st.offered else ' is not in the picker'}: {st.reason}.")
        return "\n".join(lines + ([""] + notes if notes else []))

    def check_dataset(self, name: Any) -> str:
        if name is None or name == "":
            return DEFAULT_DATASET
        if not isinstance(name, str):
            raise UploadError(f"The dataset must be a name (text), not {type(name).__name__}. "
                              f"Fix: one of {', '.join(self.available_datasets())}.")
        name = name.strip()
        if name not in self.available_datasets():
            raise UploadError(f"Unknown dataset {shown(name, 40)}. Fix: choose one of "
                              f"{', '.join(self.available_datasets())}.")
        return name

    def dataset(self, name: str) -> SequentialDataset:
        name = self.check_dataset(name)
        with self._lock:
            if name not in self._datasets:
                ds = load_dataset(name, self.data_dir)
                if name in REPORTED_USER_SAMPLES:  # the users the shipped checkpoints and rationales cover
                    n, seed = REPORTED_USER_SAMPLES[name]
                    ds = ds.subset_users(sample_users(ds, n, seed))
                self._datasets[name] = ds
            return self._datasets[name]

    def catalogue(self, name: str) -> Catalogue:
        ds = self.dataset(name)
        with self._lock:
            if name not in self._catalogues:
                self._catalogues[name] = Catalogue.from_dataset(ds)
            return self._catalogues[name]

    def user_ids(self, name: str) -> list[str]:
        return [str(u) for u in self.dataset(name).user_ids]

    def random_user(self, name: str, rng: np.random.Generator | None = None) -> str:
        ids = self.user_ids(name)
        return ids[int((rng or np.random.default_rng()).integers(len(ids)))]

    def run_dirs(self, name: str) -> list[Path]:
        """Where a dataset's artefacts may live: the run directory, then the shipped assets."""
        return [self.root / "runs" / name, self.root / "assets" / name]

    # ---- requests ------------------------------------------------------------------------
    def request_for_user(self, name: str, user_id: str) -> Request:
        ds = self.dataset(name)
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if user_id is not None and not isinstance(user_id, str):
            raise UploadError(f"The user id must be text, not {type(user_id).__name__}. Fix: a user id such as "
                              f"{self.user_ids(name)[0]!r}.")
        uid = (user_id or "").strip()
        if not uid:
            raise UploadError("No user chosen. Fix: pick a user id (or press Random user).")
        where = np.flatnonzero(ds.user_ids.astype(str) == uid) if len(uid) <= 64 else []
        if len(where) == 0:
            raise UploadError(f"User {shown(uid, 40)} is not in {name}. Fix: pick an id from the list "
                              f"(ids look like {', '.join(self.user_ids(name)[:3])}).")
        u = int(where[0])
        hist = [int(i) for i in ds.history(u, "test")]
        return Request(name, ds.titles(hist[-20:]), hist[-20:], uid, u, ds.target(u, "test"), None, hist)

    def request_for_history(self, name: str, history: History) -> Request:
        return Request(name, history.titles, history.item_idx, history=history, full_history=history.item_idx)

    def parse_custom(self, name: str, file_path: str | None = None, pasted: str | None = None,
                     picked: Sequence[str] | None = None) -> History:
        """The one custom input the visitor gave (file, else pasted text, else picked titles)."""
        cat = self.catalogue(name)
        if file_path:
            if not isinstance(file_path, str):
                raise UploadError("The upload did not arrive as a file. Fix: upload the file again.")
            return history_from_file(file_path, cat)
        if pasted is not None and not isinstance(pasted, str):
            check_text(pasted, "pasted text")
        if pasted and pasted.strip():
            return history_from_text(pasted, cat)
        if picked:
            return history_from_picks(picked, cat)
        raise UploadError("No history given. Fix: upload a CSV/JSON file, paste titles (one per line) "
                          "or pick titles from the list.")

    def resolve(self, name: Any, user_or_titles: Any) -> Request:
        """The API's input: a dataset user id (text, or an integer) or a history: a list of titles (oldest
        first), the same as JSON text, or ``{"titles": [...]}`` as a JSON upload may hold."""
        name = self.check_dataset(name)
        value = user_or_titles
        if isinstance(value, bool) or value is None:
            raise UploadError("Give a dataset user id or a list of titles (oldest first). "
                              "Fix: \"196\" or [\"Toy Story\", \"Fargo\", \"Babe\"].")
        if isinstance(value, int):
            return self.request_for_user(name, str(value))
        if isinstance(value, str):
            s = check_text(value, "input").strip()
            if "\n" in s or "\r" in s:
                return self.request_for_history(name, history_from_text(s, self.catalogue(name)))
            if s and s[0] in "[{":
                try:
                    parsed = loads_json(s)
                except json.JSONDecodeError:
                    raise UploadError(f"The input starts with {s[0]!r} but is not a JSON list of titles. "
                                      "Fix: [\"Toy Story\", \"Fargo\", \"Babe\"].") from None
                if isinstance(parsed, str):
                    parsed = [parsed]
                return self.request_for_history(name, history_from_titles(parsed, self.catalogue(name)))
            return self.request_for_user(name, s)
        if isinstance(value, (list, tuple, dict)):
            return self.request_for_history(name, history_from_titles(value, self.catalogue(name)))
        raise UploadError(f"Expected a user id or a list of titles, not {type(value).__name__}. "
                          "Fix: \"196\" or [\"Toy Story\", \"Fargo\", \"Babe\"].")

    # ---- models ----------------------------------------------------------------------------
    def adapter_path(self, name: str = DEFAULT_DATASET) -> Path:
        """The student the page runs live (slim.artifacts.live_student_adapter): v4, which knows movies
        and games and was distilled on the grounded prompt, so its Step 3 names shortlist items."""
        return self.root / live_student_adapter(name)

    def student(self, name: str = DEFAULT_DATASET):
        """SmolLM2-135M (+ the dataset's distilled LoRA when shipped), loaded once per adapter."""
        adapter = self.adapter_path(name)
        with self._lock:
            if str(adapter) not in self._students:
                from .reasoners import LlamaCppReasoner
                from .weights import student_gguf_path

                lora = adapter if adapter.exists() else None
                label = (f"SmolLM2-135M-Instruct + SLIM LoRA {_rel(adapter, self.root)}" if lora
                         else "SmolLM2-135M-Instruct (base, not distilled)")
                self._students[str(adapter)] = LlamaCppReasoner(
                    student_gguf_path(), lora, n_ctx=2048, n_threads=self.n_threads,
                    n_threads_batch=self.n_threads_batch, model_name=label)
            return self._students[str(adapter)]

    def student_distilled(self, name: str = DEFAULT_DATASET) -> bool:
        return self.adapter_path(name).exists()

    def teacher_source(self) -> tuple[str, str] | None:
        """Which live teacher a request would get, without loading it: ("endpoint", "<model> at <url>"),
        ("local", "<gguf path>") or None. An endpoint from the environment takes precedence; the local
        GGUF is used when it is installed (``SLIM_TEACHER_LOCAL=1`` insists, ``=0`` switches it off)."""
        base = os.environ.get("SLIM_TEACHER_BASE_URL")
        if base:
            return "endpoint", f"{os.environ.get('SLIM_TEACHER_MODEL', 'gpt-4o-mini')} at {base}"
        local = os.environ.get("SLIM_TEACHER_LOCAL", "auto")
        if local == "0":
            return None
        if os.environ.get("SLIM_TEACHER_GGUF"):  # another GGUF in the teacher's place (tests: the small SmolLM2)
            return "local", os.environ["SLIM_TEACHER_GGUF"]
        if local == "1" or local_teacher_installed():
            from .weights import CACHE_DIR, TEACHER_GGUF

            return "local", str(CACHE_DIR / TEACHER_GGUF.name)
        return None

    def teacher_help(self) -> str:
        """What the teacher column says when there is no live teacher (and no cached rationale)."""
        if self._teacher_error:
            return f"The teacher could not be loaded ({self._teacher_error}). " + TEACHER_HELP
        return TEACHER_DISABLED if os.environ.get("SLIM_TEACHER_LOCAL") == "0" else TEACHER_HELP

    def teacher(self):
        """A live teacher or None (see :meth:`teacher_source`); loaded once, a failure is remembered."""
        with self._lock:
            if not self._teacher_checked:
                self._teacher_checked = True
                source = self.teacher_source()
                try:
                    if source and source[0] == "endpoint":
                        from .reasoners import OpenAIChatReasoner

                        model = os.environ.get("SLIM_TEACHER_MODEL", "gpt-4o-mini")
                        self._teacher = OpenAIChatReasoner(os.environ["SLIM_TEACHER_BASE_URL"], model,
                                                           timeout=120, max_retries=1)
                    elif source:
                        from .reasoners import LlamaCppReasoner
                        from .weights import teacher_gguf_path

                        # its own thread(s), beside the student's: see the module docstring
                        threads = int(os.environ.get("SLIM_TEACHER_THREADS", str(self.n_threads)))
                        other = os.environ.get("SLIM_TEACHER_GGUF")
                        self._teacher = LlamaCppReasoner(other or teacher_gguf_path(), n_ctx=2048, n_threads=threads,
                                                         n_threads_batch=threads,
                                                         model_name=(f"{Path(other).stem} (local teacher)" if other else
                                                                     "Qwen2.5-Coder-1.5B-Instruct (local teacher)"))
                        # what `slim_train teach` decodes with, so a live answer equals the cached row
                        self.teacher_params = replace(self.teacher_params, repeat_penalty=LLAMA_SERVER_REPEAT_PENALTY)
                except Exception as e:  # noqa: BLE001 - a broken teacher must not stop the student
                    self._teacher_error = f"{type(e).__name__}: {str(e)[:200]}"
                    log.warning("live teacher not available: %s", self._teacher_error)
            return self._teacher

    def encoder(self):
        with self._lock:
            if self._encoder is None:
                from .encoders import TextEncoder

                self._encoder = TextEncoder()
            return self._encoder

    def item_text(self, name: str) -> np.ndarray:
        ds = self.dataset(name)
        with self._lock:
            if name not in self._item_text:
                from .encoders import item_text_matrix

                self._item_text[name] = item_text_matrix(ds, self.encoder())
            return self._item_text[name]

    def candidate_index(self, name: str):
        """The grounded Step 3's shortlist builder for ``name`` (slim.grounding.CandidateIndex), built once."""
        ds = self.dataset(name)
        vectors = self.item_text(name)
        with self._lock:
            if name not in self._candidates:
                from .grounding import CandidateIndex

                self._candidates[name] = CandidateIndex.for_dataset(ds, vectors)
            return self._candidates[name]

    def grounding(self, req: Request) -> Grounding:
        """The shortlist for this request's history: the catalogue the history was matched against, the
        items nearest its recent ones (+ the popularity prior), none of the history (for a dataset user
        the whole history, not only the prompt's last 20), never the held-out item's identity."""
        from .grounding import GroundingConfig

        cfg = GroundingConfig()
        index = self.candidate_index(req.dataset)
        shortlist = index.candidates(req.full_history or req.item_idx, cfg.n_candidates, cfg.recent)
        return Grounding(shortlist, [index.display[i] for i in shortlist], cfg)

    def warm_up(self, name: str = DEFAULT_DATASET) -> None:
        """Load everything a first request needs, so the first visitor does not pay for it."""
        self.catalogue(name)
        self.item_text(name)
        self.student(name)
        if grounds(self.teacher()):
            self.candidate_index(name)
        self.warm_up_rankers(name)

    def models_markdown(self, name: str = DEFAULT_DATASET) -> str:
        """One line per model the page runs for ``name``: the student, the teacher, the rankers."""
        name = self.check_dataset(name)
        adapter = self.adapter_path(name)
        student = (f"SmolLM2-135M-Instruct + the distilled SLIM LoRA `{_rel(adapter, self.root)}`" if adapter.exists()
                   else f"SmolLM2-135M-Instruct, base model (not distilled: `{live_student_adapter(name)}` is missing)")
        src = self.teacher_source()
        live = ("none live (" + ("switched off" if os.environ.get("SLIM_TEACHER_LOCAL") == "0"
                                 else "`python -m slim_train models --teacher` installs the local one") + ")"
                if src is None else f"{src[1]} (OpenAI-compatible endpoint)" if src[0] == "endpoint"
                else "Qwen2.5-Coder-1.5B-Instruct GGUF in llama.cpp, live")
        # in the order cached_teacher reads them: a grounded row first where one covers the user
        files = self.dataset_status(name).rationales
        cached = [r for f in ("/teacher-grounded.jsonl", "/teacher.jsonl") for r in files if r.endswith(f)]
        cks = self.checkpoints(name)
        best = {v: next(iter(self._best(cks, v, untagged_only=v == "match")), None) for v in ("slim", "id", "match")}
        usable = {v: c for v, c in best.items() if c is not None and str(c.path) not in self.refused}
        if not cks:
            ranker = f"no fitted checkpoints for {name} yet: untrained cosine text matching for every history"
        elif usable.get("slim"):
            ranker = (f"fitted {usable['slim'].label} `{usable['slim'].path.name}` for dataset users"
                      + (f", beside {usable['id'].label} `{usable['id'].path.name}`" if usable.get("id") else ""))
        else:
            ranker = "no usable fitted SLIM checkpoint for dataset users"
        if cks:
            ranker += (f"; fitted text matching `{usable['match'].path.name}` for custom histories" if usable.get("match")
                       else "; untrained cosine text matching for custom histories (no usable fitted `match` checkpoint)")
        refused = self.refused_for(name)
        if refused:
            ranker += f" ({len(refused)} checkpoint(s) refused: their inputs differ, see the log)"
        return (f"**Student:** {student}. **Teacher:** {live}"
                + (f"; cached rationales for dataset users from " + " then ".join(f"`{c}`" for c in cached[:2])
                   if cached else "")
                + f". **Ranking:** {ranker}.")

    # ---- cached teacher rationales ----------------------------------------------------------
    def cached_teacher(self, name: str, user_id: str) -> dict | None:
        """The teacher row for this user (test split = seq[:-1], else valid = seq[:-2]) if a teacher run wrote one.

        A grounded row (domain-aware prompt, Step 3 chosen from the catalogue) wins over a plain one even
        when it was written one item earlier: the plain teacher's Step 3 names books and films the
        catalogue does not have, which is not what the Space should show beside the student."""
        from .rationales import RationaleStore

        dirs = [d / "rationales" for d in self.run_dirs(name)]
        dirs.insert(1, self.root / "assets" / "rationales" / name)  # shipped with the Space
        candidates = [d / f for f in ("teacher-grounded.jsonl", "teacher.jsonl") for d in dirs]
        for path in candidates:
            if path.exists():
                with self._lock:
                    key = ("teacher-store", str(path))
                    if key not in self._modules:
                        self._modules[key] = RationaleStore(path)
                    store = self._modules[key]
                for split in ("test", "valid"):  # test: from seq[:-1] like the demo; valid: one item shorter
                    row = store.rows.get((str(user_id), split))
                    if row and row.get("status") == "ok":
                        return {**row, "_source": str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)}
        return None

    # ---- generation ----------------------------------------------------------------------
    def _generate(self, role: str, reasoner, messages, params: GenerationParams, col: Column,
                  emit: Callable[[], None], grounding: Grounding | None = None) -> None:
        """Stream one rationale into ``col`` (memoised per prompt: greedy decoding is deterministic).

        ``grounding``: Steps 1-2 stream free, then Step 3 is ``grounding.cfg.k`` catalogue items chosen
        one by one under a grammar over the shortlist (slim.grounding.grounded_generation)."""
        key = f"{role}:{reasoner.model_name}:{prompt_hash(messages)}:{params.max_tokens}:{bool(grounding)}"
        col.model = reasoner.model_name
        col.status = "running"
        t0 = col.started = time.perf_counter()
        with self._lock:
            memo = self._memo.get(key)
        if memo is not None:
            col.text, col.status, col.from_memory = memo[0], "done", True
            col.tokens, col.step3_items = int(memo[1]), list(memo[2])
            col.seconds = time.perf_counter() - t0
            col.note = " · ".join(p for p in (col.note, "same prompt answered earlier: shown from memory") if p)
            emit()
            return
        col.waiting = "queued: another visitor is being served"
        emit()

        def on_delta(delta: str) -> None:
            now = time.perf_counter()
            if col.first_token_s is None:
                col.first_token_s = now - t0
            col.text += delta
            col.tokens += 1
            col.seconds = now - t0
            emit()

        with self._model_locks[role]:
            col.waiting = ""
            if grounding is None:
                for delta in reasoner.stream(messages, params):
                    on_delta(delta)
            else:
                self._grounded(reasoner, messages, params, grounding, col, on_delta, emit)
        col.seconds = time.perf_counter() - t0
        col.status = "done"
        with self._lock:
            self._memo[key] = (col.text, str(col.tokens), tuple(col.step3_items))
            while len(self._memo) > 256:
                self._memo.popitem(last=False)
        emit()

    @staticmethod
    def _grounded(reasoner, messages, params, g: Grounding, col: Column, on_delta, emit) -> None:
        from .grounding import STEP3_HEADER, grounded_generation

        state = {"items": 0}

        def on_item(text: str) -> None:
            # the column shows the answer as grounded_generation builds it: Steps 1-2, "Step 3:", the items
            if state["items"] == 0:
                col.text = col.text.rstrip().rstrip("*#").rstrip() + STEP3_HEADER
            state["items"] += 1
            col.text += f"{state['items']}. {text.strip()}\n"
            col.tokens += 1
            emit()

        gen, picked = grounded_generation(_StreamedSteps(reasoner, on_delta, on_item), messages, g.titles, params, g.cfg)
        if gen.error:
            raise RuntimeError(gen.error)
        col.text, col.tokens = gen.text, gen.completion_tokens
        col.step3_items = [g.shortlist[j] for j in picked]
        col.note = " · ".join(p for p in (col.note, (
            f"Step 3: {len(picked)} catalogue items not in the history, chosen under a grammar from the "
            f"{len(g.titles)} nearest candidates") if picked else "") if p)

    def run(self, req: Request, min_interval: float = 0.08) -> Iterator[Update]:
        """Stream both rationales, then the rankings; yields at most every ``min_interval`` s while streaming."""
        teacher = Column("teacher")
        student = Column("student")
        events: queue.Queue = queue.Queue()
        emit = lambda: events.put("tick")  # noqa: E731 - a wake-up, the state is in the columns

        # teacher: cached row for dataset users, else live when configured, else an explanation
        threads = []
        cached = self.cached_teacher(req.dataset, req.user_id) if req.is_dataset_user else None
        if cached:
            teacher.model, teacher.text, teacher.status = cached.get("model", "teacher"), cached["rationale"], "cached"
            which = ("same history" if cached["split"] == "test"
                     else "written for the training prefix: the history minus its last item")
            teacher.note = (f"cached teacher rationale from `{cached['_source']}` ({which}; "
                            f"{float(cached.get('seconds') or 0):.1f} s, {cached.get('completion_tokens', 0)} tokens "
                            "when generated)")
        else:
            live = self.teacher()
            if live is None:
                teacher.status, teacher.model = "unavailable", "Teacher (not configured)"
                teacher.text = ""
                teacher.note = self.teacher_help()
            else:
                # the dataset's domain in the teacher's words ("A user watched the movies..."); the
                # student keeps the generic wording its adapter was distilled on
                build = prompt_builder("teacher", req.dataset)
                g = self.grounding(req) if grounds(live) else None
                messages = build(req.titles, candidates=g.titles, k=g.cfg.k) if g else build(req.titles)
                threads.append(threading.Thread(target=self._worker, daemon=True, args=(
                    "teacher", live, messages, self.teacher_params, teacher, emit, events, g)))
        student_model = self.student(req.dataset)
        if not self.student_distilled(req.dataset):
            student.note = f"not distilled yet: {live_student_adapter(req.dataset)} is missing"
        # the student's Step 3 is grounded too (same shortlist, under a grammar); its prompt is the one
        # its adapter was distilled on (slim.artifacts.adapter_prompt): a grounded student sees the
        # domain and the shortlist, a plain one the history only, so only the items it may name change
        sg = self.grounding(req) if grounds(student_model) else None
        if sg is not None and adapter_prompt(self.adapter_path(req.dataset)) == "grounded":
            s_messages = prompt_builder("student", req.dataset, "dataset")(req.titles, candidates=sg.titles, k=sg.cfg.k)
        else:
            s_messages = student_messages(req.titles)
        threads.append(threading.Thread(target=self._worker, daemon=True, args=(
            "student", student_model, s_messages, self.student_params, student, emit, events, sg)))
        for t in threads:
            t.start()
        yield Update(teacher, student, info=self.describe(req))
        last = 0.0
        while any(t.is_alive() for t in threads) or not events.empty():
            try:
                msg = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(msg, Exception):
                raise msg
            now = time.perf_counter()
            if now - last >= min_interval:
                last = now
                yield Update(teacher, student, info=self.describe(req))
        for t in threads:
            t.join()
        ranked = self.rank(req, student.text)
        yield Update(teacher, student, ranked, self.describe(req, ranked), done=True)

    def _worker(self, role, reasoner, messages, params, col: Column, emit, events: queue.Queue,
                grounding: Grounding | None = None) -> None:
        try:
            self._generate(role, reasoner, messages, params, col, emit, grounding)
        except Exception as e:  # noqa: BLE001 - an endpoint failure is shown in its column, not raised
            col.status, col.waiting = "error", ""
            col.note = f"{role} failed: {type(e).__name__}: {str(e)[:200]}"
            emit()

    # ---- ranking ---------------------------------------------------------------------------
    def _module(self, name: str, ck: Checkpoint, item_text: np.ndarray | None):
        """The fitted module of ``ck``, loaded once; a refusal is remembered and logged once, with why."""
        key = (name, str(ck.path))
        with self._lock:
            if key not in self._modules:
                try:
                    self._modules[key] = load_module(ck, self.dataset(name), item_text)
                except (ValueError, RuntimeError, KeyError, OSError) as e:
                    why = " ".join(f"{type(e).__name__}: {e}".split())
                    self._modules[key] = CheckpointRefused(why)
                    self.refused[str(ck.path)] = why
                    log.warning("checkpoint %s not used: %s", _rel(ck.path, self.root), why)
            module = self._modules[key]
        if isinstance(module, CheckpointRefused):
            raise module
        return module

    def checkpoints(self, name: str) -> list[Checkpoint]:
        return find_checkpoints([d / "checkpoints" for d in self.run_dirs(name)])

    def refused_for(self, name: str) -> dict[str, str]:
        """Checkpoints of ``name`` refused so far: path -> why."""
        dirs = [str(d / "checkpoints") for d in self.run_dirs(name)]
        return {p: w for p, w in self.refused.items() if any(p.startswith(d) for d in dirs)}

    @staticmethod
    def _best(cks: Sequence[Checkpoint], variant: str, untagged_only: bool = False) -> list[Checkpoint]:
        """Checkpoints of one variant, best validation NDCG@10 first (untagged before tagged runs)."""
        pool = [c for c in cks if c.variant == variant and not (untagged_only and c.tag)]
        return sorted(pool, key=lambda c: (bool(c.tag), -c.valid_ndcg10))

    def warm_up_rankers(self, name: str = DEFAULT_DATASET) -> None:
        """Load (or refuse, with a log line) the checkpoints the first request would try."""
        cks = self.checkpoints(name)
        for variant in ("slim", "id", "match"):
            for ck in self._best(cks, variant, untagged_only=variant == "match"):
                try:
                    self._module(name, ck, None if variant == "id" else self.item_text(name))
                    break
                except CheckpointRefused:
                    continue

    def rank(self, req: Request, rationale: str) -> list[Ranked]:
        """Top-K lists: the fitted SLIM checkpoint + its plain backbone (dataset users), fitted text
        matching (custom histories); cosine similarity only where no fitted checkpoint can be used."""
        import torch

        ds = self.dataset(req.dataset)
        item_text = self.item_text(req.dataset)
        uvec = self.encoder().encode([rationale_text(rationale) or " ".join(req.titles)])[0]
        cks = self.checkpoints(req.dataset)
        out: list[Ranked] = []
        if req.is_dataset_user:
            from .recommenders.train import history_matrix

            def backbone_scores(ck: Checkpoint, text: np.ndarray | None, user_vec) -> np.ndarray | None:
                try:
                    model = self._module(req.dataset, ck, text)
                except CheckpointRefused:
                    return None  # stale or foreign checkpoint (logged once): the next best one is tried
                max_len = ck.record["key"]["config"]["max_len"]
                seq = torch.as_tensor(history_matrix(ds, np.array([req.user_idx]), "test", max_len))
                with torch.no_grad():
                    return model.score_last(seq, user_vec).numpy()[0]

            plain_all = self._best(cks, "id")
            for ck in self._best(cks, "slim"):
                s = backbone_scores(ck, item_text, torch.as_tensor(uvec)[None])
                if s is not None:
                    out.append(self._top(s, req, ck.label, (
                        f"fitted SLIM checkpoint `{ck.path.name}` (the best by validation NDCG@10, "
                        f"{ck.valid_ndcg10:.3f}): {ck.backbone} item IDs fused with the item texts and the "
                        "student's rationale")))
                    plain_all = [c for c in plain_all if c.backbone == ck.backbone] or plain_all
                    break
            for ck in plain_all:
                s = backbone_scores(ck, None, None)
                if s is not None:
                    out.append(self._top(s, req, f"{ck.label} (plain backbone)", (
                        f"fitted checkpoint `{ck.path.name}`: item IDs only, no rationale "
                        f"(validation NDCG@10 {ck.valid_ndcg10:.3f})")))
                    break
        if not out or out[0].variant != _slim_label(out[0]):
            out.insert(0, self._match(req, cks, item_text, uvec))
        return out

    def _match(self, req: Request, cks: list[Checkpoint], item_text: np.ndarray, uvec: np.ndarray) -> Ranked:
        import torch

        for ck in self._best(cks, "match", untagged_only=True):
            try:
                model = self._module(req.dataset, ck, item_text)
            except CheckpointRefused:
                continue
            with torch.no_grad():
                s = model.score_last(None, torch.as_tensor(uvec)[None]).numpy()[0]
            why = "" if not req.is_dataset_user else "; no fitted SLIM backbone checkpoint could be used"
            return self._top(s, req, MATCH_LABEL, (
                f"fitted text-matching checkpoint `{ck.path.name}` (learned projection g_t, validation NDCG@10 "
                f"{ck.valid_ndcg10:.3f}): the rationale and the item texts, no item IDs{why}"))
        s = item_text @ uvec
        refused = self.refused_for(req.dataset)
        why = (f"{len(refused)} fitted checkpoint(s) were refused (their inputs differ; see the log)" if refused
               else f"no fitted checkpoint for {req.dataset}")
        return self._top(s, req, UNTRAINED_LABEL,
                         f"{why}: cosine similarity of MiniLM vectors of the student rationale and the item "
                         "texts, without the learned projection g_t")

    def _top(self, scores: np.ndarray, req: Request, variant: str, note: str) -> Ranked:
        s = np.asarray(scores, dtype=np.float64).copy()
        s[0] = -np.inf
        s[np.asarray(req.full_history, dtype=np.int64)] = -np.inf
        order = np.argsort(-s, kind="stable")
        top = [int(i) for i in order[:TOP_K] if np.isfinite(s[i])]
        target_rank = None
        if req.target is not None:
            target_rank = int(np.sum(s > s[req.target])) + 1
        return Ranked(variant, top, [float(s[i]) for i in top], note, target_rank)

    # ---- tables and text -------------------------------------------------------------------
    def table(self, req: Request, ranked: Sequence[Ranked]) -> pd.DataFrame:
        """Long format: rank, variant, title, score, next_item (the held-out item, dataset users)."""
        ds = self.dataset(req.dataset)
        rows = []
        for r in ranked:
            for k, (i, sc) in enumerate(zip(r.item_idx, r.scores), 1):
                rows.append({"rank": k, "variant": r.variant, "title": ds.items.at[i, "title"],
                             "score": round(sc, 4), "next_item": "★ held-out next item" if i == req.target else ""})
        return pd.DataFrame(rows, columns=["rank", "variant", "title", "score", "next_item"])

    def describe(self, req: Request, ranked: Sequence[Ranked] = ()) -> str:
        ds = self.dataset(req.dataset)
        lines = []
        if req.is_dataset_user:
            n = len(req.full_history)
            lines.append(f"User **{req.user_id}** of {req.dataset}: {n} items before the held-out one"
                         + (f" (the prompt shows the last {len(req.titles)})" if n > len(req.titles) else "")
                         + f". Held-out next item: **{ds.items.at[req.target, 'title']}**.")
        else:
            lines.append(f"Custom history: {len(req.titles)} catalogue items.")
        for r in ranked:
            hit = ""
            if r.target_rank is not None:
                hit = (f" The held-out item is ranked **#{r.target_rank}**" + (" (in the top 10 ★)." if r.target_rank <= TOP_K else "."))
            lines.append(f"- **{r.variant}**: {r.note}.{hit}")
        if ranked:
            for path, why in list(self.refused_for(req.dataset).items())[:3]:
                lines.append(f"- _not used:_ `{Path(path).name}`: {why[:240]}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# results tab: report files written by slim_eval (never recomputed here)
# ---------------------------------------------------------------------------------------
@dataclass
class Report:
    dataset: str
    markdown: str
    plots: list[Path]
    source: Path


def find_reports(root: Path = REPO_ROOT) -> list[Report]:
    """Every ``<name>/report.md`` (+ its ``plots/*.png``) under ``runs/`` (preferred: a fresh run),
    ``assets/reports/`` (the reports that ship) and ``assets/``; ML-100K first, then by name."""
    found: dict[str, Report] = {}
    for base in (root / "runs", root / "assets" / "reports", root / "assets"):
        if not base.is_dir():
            continue
        for md in sorted(base.glob("*/report.md")):
            name = md.parent.name
            if name in found:
                continue
            plots = sorted((md.parent / "plots").glob("*.png")) if (md.parent / "plots").is_dir() else []
            plots += sorted(p for p in md.parent.glob("*.png"))
            found[name] = Report(name, md.read_text(encoding="utf-8"), plots, md)
    return sorted(found.values(), key=lambda r: (r.dataset != DEFAULT_DATASET, r.dataset))
