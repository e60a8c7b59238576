"""The student, the teacher, the text encoder and the candidate index: found, loaded once, described."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slim.artifacts.layout import live_student_adapter
from slim.demo.config import DEFAULT_DATASET, TEACHER_DISABLED, TEACHER_HELP
from slim.demo.display import _rel
from slim.demo.requests import Request
from slim.lm.reasoners import LLAMA_SERVER_REPEAT_PENALTY

log = logging.getLogger("slim.demo")  # one logger for the Space's service


def local_teacher_installed() -> bool:
    """The local teacher GGUF is assembled in the cache, or all its part packages are installed
    (``python -m slim_train models --teacher`` does both); nothing is installed or read here."""
    from slim.lm.weights import CACHE_DIR, TEACHER_GGUF

    out = CACHE_DIR / TEACHER_GGUF.name
    if out.exists() and (not TEACHER_GGUF.size or out.stat().st_size == TEACHER_GGUF.size):
        return True
    return all(TEACHER_GGUF.part_path(n) is not None for n in range(1, TEACHER_GGUF.parts + 1))


@dataclass
class Grounding:
    """A grounded Step 3 for one request: the shortlist (item indices, display titles) and the config."""

    shortlist: list[int]
    titles: list[str]
    cfg: Any  # slim.lm.grounding.GroundingConfig
    categories: list[str] = field(default_factory=list)  # a grounded Step 2's choices (slim.lm.grounded_step2)
    step2_lead: str = ""


def grounds(reasoner) -> bool:
    """The in-process llama.cpp model (slim.lm.llama_reasoner.LlamaCppReasoner) takes a grammar: Step 3 is grounded."""
    return callable(getattr(reasoner, "complete", None))


class ModelsMixin:
    """The models of a DemoService, loaded lazily behind its locks."""

    def adapter_path(self, name: str = DEFAULT_DATASET) -> Path:
        """The student the page runs live (slim.artifacts.layout.live_student_adapter): v4, which knows movies
        and games and was distilled on the grounded prompt, so its Step 3 names shortlist items."""
        return self.root / live_student_adapter(name)

    def student(self, name: str = DEFAULT_DATASET):
        """SmolLM2-135M (+ the dataset's distilled LoRA when shipped), loaded once per adapter; the adapter
        merged into one q8_0 GGUF (:meth:`merged_student_path`) when that was built."""
        adapter = self.adapter_path(name)
        with self._lock:
            if str(adapter) not in self._students:
                from slim.lm.llama_reasoner import LlamaCppReasoner
                from slim.lm.weights import student_gguf_path

                lora = adapter if adapter.exists() else None
                merged = self.merged_student_path(name) if lora else None
                label = (f"SmolLM2-135M-Instruct + SLIM LoRA {_rel(adapter, self.root)}" if lora
                         else "SmolLM2-135M-Instruct (base, not distilled)")
                if merged:
                    label += f", merged: {_rel(merged, self.root)}"
                self._students[str(adapter)] = LlamaCppReasoner(
                    merged or student_gguf_path(), None if merged else lora, n_ctx=2048, n_threads=self.n_threads,
                    n_threads_batch=self.n_threads_batch, model_name=label)
            return self._students[str(adapter)]

    def merged_student_path(self, name: str = DEFAULT_DATASET) -> Path | None:
        """``runs/merged/<adapter folder>-q8_0.gguf`` when it exists and is newer than the adapter, else None.

        ``python -m slim_train merge --adapter assets/student-v4 --quant q8_0 --out runs/merged/student-v4-q8_0.gguf``
        builds it (21 s on a fresh clone; 138 MiB, so it is not committed). It is the engine the shipped rows
        were written with, and the Space's student answers about 1.3x faster with it than with the base
        GGUF + LoRA (docs/NOTES.md); an adapter changed after the merge makes the file stale: not used."""
        adapter = self.adapter_path(name)
        merged = self.root / "runs" / "merged" / f"{adapter.parent.name}-q8_0.gguf"
        if not merged.exists():
            return None
        if adapter.exists() and merged.stat().st_mtime < adapter.stat().st_mtime:
            log.warning("%s is older than %s: the base GGUF + LoRA is used", merged, adapter)
            return None
        return merged

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
            from slim.lm.weights import CACHE_DIR, TEACHER_GGUF

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
                        from slim.lm.reasoners import OpenAIChatReasoner

                        model = os.environ.get("SLIM_TEACHER_MODEL", "gpt-4o-mini")
                        self._teacher = OpenAIChatReasoner(os.environ["SLIM_TEACHER_BASE_URL"], model,
                                                           timeout=120, max_retries=1)
                    elif source:
                        from slim.lm.llama_reasoner import LlamaCppReasoner
                        from slim.lm.weights import teacher_gguf_path

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
                from slim.lm.encoders import TextEncoder

                self._encoder = TextEncoder()
            return self._encoder

    def item_text(self, name: str) -> np.ndarray:
        ds = self.dataset(name)
        with self._lock:
            if name not in self._item_text:
                from slim.lm.encoders import item_text_matrix

                self._item_text[name] = item_text_matrix(ds, self.encoder())
            return self._item_text[name]

    def candidate_index(self, name: str):
        """The grounded Step 3's shortlist builder for ``name`` (slim.lm.grounding.CandidateIndex), built once."""
        ds = self.dataset(name)
        vectors = self.item_text(name)
        with self._lock:
            if name not in self._candidates:
                from slim.lm.grounding import CandidateIndex, GroundingConfig

                self._candidates[name] = CandidateIndex.for_config(ds, vectors, GroundingConfig.for_dataset(name))
            return self._candidates[name]

    def grounding(self, req: Request) -> Grounding:
        """The shortlist for this request's history: the catalogue the history was matched against, the
        items nearest its recent ones (+ the popularity prior), none of the history (for a dataset user
        the whole history, not only the prompt's last 20) nor another edition of a history item (a visitor
        who owns "Far Cry 3" is not offered it again for another console), never the held-out item's identity."""
        from slim.lm.grounding import GroundingConfig

        cfg = GroundingConfig.for_dataset(req.dataset, exclude_editions=True)  # never the same product again
        index = self.candidate_index(req.dataset)
        shortlist = index.candidates(req.full_history or req.item_idx, cfg.n_candidates, cfg.recent, cfg.exclude_editions)
        from slim.lm.grounded_step2 import step2_choices

        categories, lead = step2_choices(self.dataset(req.dataset), req.item_idx, cfg)
        return Grounding(shortlist, [index.display[i] for i in shortlist], cfg, categories, lead)

    def warm_up(self, name: str = DEFAULT_DATASET) -> None:
        """Load everything a first request needs, so the first visitor does not pay for it."""
        self.catalogue(name)
        self.item_text(name)
        student = self.student(name)
        if hasattr(student, "warm_up"):  # the in-process llama.cpp student: its vocabulary view for the choices
            student.warm_up()
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
                + ("; cached rationales for dataset users from " + " then ".join(f"`{c}`" for c in cached[:2])
                   + (" (a plain-prompt row gives way to the live teacher)" if src is not None else "")
                   if cached else "")
                + f". **Ranking:** {ranker}.")

    # ---- cached teacher rationales ----------------------------------------------------------
    def cached_teacher(self, name: str, user_id: str) -> dict | None:
        """The teacher row for this user (test split = seq[:-1], else valid = seq[:-2]) if a teacher run wrote one.

        A grounded row (domain-aware prompt, Step 3 chosen from the catalogue) wins over a plain one even
        when it was written one item earlier: the plain teacher's Step 3 names books and films the
        catalogue does not have, which is not what the Space should show beside the student."""
        from slim.lm.rationale_file import RationaleStore

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
