"""Running the student and the teacher on one request: streaming, grounding, memoised answers, threads."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

from slim.artifacts.layout import adapter_prompt, live_student_adapter
from slim.demo.display import Column
from slim.demo.models import Grounding, grounds
from slim.demo.requests import Request, Update
from slim.lm.prompts import prompt_builder, prompt_hash, student_messages
from slim.lm.reasoners import GenerationParams


class _StreamedSteps:
    """The reasoner as ``slim.lm.grounding.grounded_generation`` calls it, with each piece shown as it comes:
    the free text streams token by token; after every grammar-bound completion (a Step-2 category, a
    Step-3 item) the column shows the answer so far, which is that call's prefix plus its completion."""

    def __init__(self, reasoner, on_delta: Callable[[str], None], on_answer: Callable[[str], None]):
        self.reasoner, self.on_delta, self.on_answer = reasoner, on_delta, on_answer
        self.model_name = getattr(reasoner, "model_name", "teacher")

    def complete(self, messages, prefix: str, params=None, stop=(), grammar=None, reset: bool = False):
        if grammar is None and not prefix and hasattr(self.reasoner, "_llm"):
            return _stream_head(self.reasoner, messages, params, stop, self.on_delta)
        gen = self.reasoner.complete(messages, prefix, params, stop=stop, grammar=grammar, reset=reset)
        if grammar is None and not prefix:
            self.on_delta(gen.text)
        else:
            self.on_answer(prefix + gen.text)
        return gen

    def choose(self, messages, prefix: str, options, params=None):
        from slim.lm.grounding import choose_one

        position, gen = choose_one(self.reasoner, messages, prefix, options, params)
        self.on_answer(prefix + gen.text)
        return position, gen


def _stream_head(reasoner, messages, params, stop, on_delta):
    """``LlamaCppReasoner.complete(messages, "", params, stop=stop, reset=True)``, streamed: the same
    rendered chat prompt and decoding, each new piece passed to ``on_delta``."""
    from slim.lm.reasoners import Generation, _penalty

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


class GenerationMixin:
    """Generating the two rationales of a request."""

    def _generate(self, role: str, reasoner, messages, params: GenerationParams, col: Column,
                  emit: Callable[[], None], grounding: Grounding | None = None) -> None:
        """Stream one rationale into ``col`` (memoised per prompt: greedy decoding is deterministic).

        ``grounding``: Steps 1-2 stream free, then Step 3 is ``grounding.cfg.k`` catalogue items chosen
        one by one under a grammar over the shortlist (slim.lm.grounding.grounded_generation)."""
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
        from slim.lm.grounding import grounded_generation

        def on_answer(text: str) -> None:
            col.text = text.lstrip("\n")
            col.tokens += 1
            emit()

        gen, picked, chosen = grounded_generation(_StreamedSteps(reasoner, on_delta, on_answer), messages, g.titles,
                                                  params, g.cfg, categories=g.categories, step2_lead=g.step2_lead)
        if gen.error:
            raise RuntimeError(gen.error)
        col.text, col.tokens = gen.text, gen.completion_tokens
        col.step3_items = [g.shortlist[j] for j in picked]
        col.note = " · ".join(p for p in (col.note, (
            f"Step 2: {len(chosen)} catalogue categories, chosen under a grammar from the {len(g.categories)} most "
            f"frequent in the history") if chosen else "", (
            f"Step 3: {len(picked)} catalogue items not in the history"
            f"{' (nor other editions of its items)' if g.cfg.exclude_editions else ''}, chosen under a grammar "
            f"from the {len(g.titles)} nearest candidates") if picked else "") if p)

    def run(self, req: Request, min_interval: float = 0.08) -> Iterator[Update]:
        """Stream both rationales, then the rankings; yields at most every ``min_interval`` s while streaming."""
        teacher = Column("teacher")
        student = Column("student")
        events: queue.Queue = queue.Queue()
        emit = lambda: events.put("tick")  # noqa: E731 - a wake-up, the state is in the columns

        # teacher: cached row for dataset users, else live when configured, else an explanation
        threads = []
        cached = self.cached_teacher(req.dataset, req.user_id) if req.is_dataset_user else None
        plain = cached is not None and not cached.get("step3_items")
        if plain and self.teacher() is not None:
            # a row of the plain prompt (no domain, free Step 3: "The Princess Bride by Christopher Nolan")
            # is not shown beside a grounded student when a live teacher can write a grounded one
            teacher.note = (f"the cached row (`{cached['_source']}`) was written with the plain prompt, whose "
                            "Step 3 names items outside the catalogue: the live teacher writes a grounded one")
            cached = None
        if cached:
            teacher.model, teacher.text, teacher.status = cached.get("model", "teacher"), cached["rationale"], "cached"
            which = ("same history" if cached["split"] == "test"
                     else "written for the training prefix: the history minus its last item")
            teacher.note = (f"cached teacher rationale from `{cached['_source']}` ({which}; "
                            f"{float(cached.get('seconds') or 0):.1f} s, {cached.get('completion_tokens', 0)} tokens "
                            "when generated)")
            if plain:
                teacher.note += (" · written with the plain prompt (no domain, Step 3 free), so its Step 3 can "
                                 "name items the catalogue does not have; `python -m slim_train models --teacher` "
                                 "installs the live teacher, which writes a grounded one")
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
        # its adapter was distilled on (slim.artifacts.layout.adapter_prompt): a grounded student sees the
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
