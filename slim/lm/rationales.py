"""Writing rationales for many users: rows made from a reasoner's generations, appended to a
:class:`~slim.lm.rationale_file.RationaleStore` (which owns the file format and resumption).
Rows already present are skipped, so reruns never duplicate.

Leakage guard: the prompt for ``split`` is built from ``dataset.history(u, split)`` only: the train
prefix for ``valid`` and the train prefix + validation item for ``test``; never the target.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Sequence

from slim.data.dataset import SequentialDataset
from slim.data.split import Split
from slim.lm.prompts import Messages, parse_steps, prompt_hash
from slim.lm.rationale_file import RationaleStore
from slim.lm.reasoners import Generation, GenerationParams, Reasoner

PromptFn = Callable[[Sequence[str]], Messages]


class EndpointDown(RuntimeError):
    """The reasoner failed several calls in a row: stop instead of writing error rows."""


def make_row(dataset: SequentialDataset, user: int, split: Split, messages: Messages, gen: Generation,
             params: GenerationParams, role: str, forced_step3: bool = False) -> dict:
    parsed = parse_steps(gen.text)
    if gen.error:
        status = f"error: {gen.error}"
    elif parsed.ok:
        status = "ok"
    else:
        status = f"rejected: {parsed.reason}" + (" (hit max_tokens)" if gen.finish_reason == "length" else "")
    return {
        "user_id": str(dataset.user_ids[user]),
        "user_idx": int(user),
        "split": split,
        "role": role,
        "dataset": dataset.name,
        "history_len": int(len(dataset.history(user, split))),
        "model": gen.model,
        "prompt_hash": prompt_hash(messages),
        "params": params.as_dict(),
        "rationale": gen.text,
        "steps": parsed.steps,
        "status": status,
        "seconds": round(gen.seconds, 3),
        "completion_tokens": gen.completion_tokens,
        "prompt_tokens": gen.prompt_tokens,
        "finish_reason": gen.finish_reason,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"forced_step3": True} if forced_step3 else {}),
    }


STEP3_PREFILL = "\nStep 3:"


def stopped_before_step3(text: str, finish_reason: str) -> bool:
    """The model ended its answer (not the token budget) after Step 2: the failure a prefill repairs.

    The v3 student does this on 4% of Games rows but a third of Scientific rows, where it ends on
    a Step-2 list; a rejected row is a user with no rationale (a zero vector) downstream.
    """
    return finish_reason == "stop" and parse_steps(text).reason == "missing Step 3"


def finish_step3(reasoner, messages: Messages, gen: Generation, params: GenerationParams) -> tuple[Generation, bool]:
    """Continue an answer that stopped before Step 3 from ``<its text>\nStep 3:`` (assistant prefill).

    The forced two tokens are the format the student was distilled on, not content; the row keeps the
    original token budget (the continuation gets what is left of ``max_tokens``) and says
    ``forced_step3`` so reports can count it. Returns (generation, whether it was continued).
    """
    if gen.error or not stopped_before_step3(gen.text, gen.finish_reason):
        return gen, False
    left = params.max_tokens - gen.completion_tokens
    if left < 8:
        return gen, False
    prefix = gen.text.rstrip() + STEP3_PREFILL
    more = reasoner.continue_answer(messages, prefix, GenerationParams(**{**params.as_dict(), "max_tokens": left}))
    return Generation(prefix + more.text, gen.completion_tokens + more.completion_tokens, gen.prompt_tokens,
                      gen.seconds + more.seconds, gen.model, more.finish_reason, more.error), True


def finished_row(reasoner, dataset: SequentialDataset, user: int, split: Split, messages: Messages,
                 gen: Generation, params: GenerationParams, role: str, finish: bool) -> dict:
    """``make_row``, after continuing an answer that stopped before Step 3 when ``finish`` is set."""
    forced = False
    if finish:
        gen, forced = finish_step3(reasoner, messages, gen, params)
    return make_row(dataset, user, split, messages, gen, params, role, forced_step3=forced)


def grounded_row(reasoner, ds, user: int, split: str, prompt, params: GenerationParams, role: str,
                 cfg, index) -> dict:
    """A row whose Step 3 is K grammar-bound catalogue items (slim.lm.grounding); records them as item ids.

    The shortlist is computed from the history the prompt shows (never the target), shown in the
    prompt, and enforced by the grammar.
    """
    from slim.lm.grounded_step2 import step2_choices
    from slim.lm.grounding import grounded_generation

    shortlist, titles = grounding_shortlist(ds, user, split, cfg, index)
    messages = prompt_for(ds, user, split, prompt, candidates=titles, k=cfg.k)
    null_messages = prompt([], candidates=titles, k=cfg.k) if cfg.pick == "pmi" else None
    categories, lead = step2_choices(ds, ds.history(user, split), cfg)
    gen, picked, chosen = grounded_generation(reasoner, messages, titles, params, cfg, null_messages, categories, lead)
    row = make_row(ds, user, split, messages, gen, params, role)
    row.update(step3_items=[int(shortlist[j]) for j in picked],
               step3_path="grammar" if cfg.pick == "grammar" else f"scored-{cfg.pick}", grounding=cfg.record())
    if categories:
        row.update(step2_categories=chosen, step2_path="grammar")
    return row


def grounding_shortlist(ds, user: int, split: str, cfg, index) -> tuple[list[int], list[str]]:
    """The grounded Step 3's candidates (item ids, display titles), from the history the prompt shows."""
    shortlist = index.candidates(ds.history(user, split), cfg.n_candidates, cfg.recent, cfg.exclude_editions)
    return shortlist, [index.display[i] for i in shortlist]


def numbered_list_prompt(ds, user: int, split: str, prompt, cfg, titles: Sequence[str]) -> Messages:
    """The endpoint path's prompt: the grounded prompt, its shortlist numbered (slim.lm.grounding)."""
    from slim.lm.numbered_list import number_the_candidates

    return number_the_candidates(prompt_for(ds, user, split, prompt, candidates=titles, k=cfg.k), titles, cfg.k)


def numbered_list_row(ds, user: int, split: str, messages: Messages, gen: Generation, params: GenerationParams,
                      role: str, cfg, shortlist: Sequence[int], titles: Sequence[str]) -> dict:
    """A row whose Step 3 is the model's free answer snapped to the numbered shortlist: the path of
    endpoints that take no grammar (OpenAI-compatible servers: vLLM, OpenAI, llama.cpp's server).

    ``step3_items``: the item ids of the candidates the answer named (by number or title, see
    slim.lm.numbered_list.snap_to_candidates), in order, distinct, at most ``cfg.k``; none is in the history
    (the shortlist excludes it) and none is invented: fewer than K snapped picks stay fewer
    (``step3_snapped`` counts them; ``cfg.k`` is how many were asked for).

    Step 3 of ``rationale`` is rewritten to ``Step 3:\\n1. <title>\\n2. ...`` of the snapped items, the
    text the grammar path writes, and the model's own text is kept in ``raw_rationale``. Why: the
    rationale is what gets encoded and what a student is distilled on; a Step 3 that says "#7", misspells
    a title, or adds items outside the catalogue would carry names no item has, and would teach a
    student a format its grammar-bound inference never produces. A Step 3 that snaps to no candidate
    makes the row ``rejected`` (its Step 3 names no catalogue item), not a row with a free Step 3.
    """
    from slim.lm.grounding import split_step3, with_step3
    from slim.lm.numbered_list import snap_to_candidates

    parts = None if gen.error else split_step3(gen.text)
    picked = snap_to_candidates(parts[1], titles, cfg.k) if parts else []
    text = with_step3(parts[0], [titles[j] for j in picked]) if picked else gen.text
    row = make_row(ds, user, split, messages, Generation(text, gen.completion_tokens, gen.prompt_tokens, gen.seconds,
                                                         gen.model, gen.finish_reason, gen.error), params, role)
    if row["status"] == "ok" and not picked:
        row["status"] = "rejected: Step 3 names none of the candidates"
    row.update(raw_rationale=gen.text, step3_items=[int(shortlist[j]) for j in picked], step3_path="numbered-list",
               step3_snapped=len(picked), grounding=cfg.record())
    return row


def prompt_for(dataset: SequentialDataset, user: int, split: Split, prompt_fn: PromptFn, **extra) -> Messages:
    """The only way a rationale prompt is built: from the history, never the target.

    ``extra`` goes to the prompt builder (e.g. a grounded Step 3's ``candidates``, themselves
    computed from the same history)."""
    return prompt_fn(dataset.titles(dataset.history(user, split)), **extra)


def write_rationales(
    reasoner: Reasoner,
    dataset: SequentialDataset,
    users: Iterable[int],
    splits: Sequence[Split],
    store: RationaleStore,
    prompt_fn: PromptFn,
    params: GenerationParams,
    role: str,
    batch_size: int = 1,
    retry_errors: bool = True,
    max_consecutive_errors: int = 3,
    finish: bool = False,
    grounding=None,
    candidates=None,
) -> Iterator[dict]:
    """Generate missing rows, append each as soon as its batch is done, yield it (for progress).

    ``grounding`` (slim.lm.grounding.GroundingConfig) with ``candidates`` (its CandidateIndex): Step 3 is
    the free answer snapped to a numbered shortlist (:func:`numbered_list_row`), for reasoners that
    take no grammar.

    Stops with :class:`EndpointDown` after ``max_consecutive_errors`` failed calls in a row: a dead
    endpoint must not turn every remaining user into an error row.
    """
    if grounding is not None and (candidates is None or finish):
        raise ValueError("a grounded Step 3 needs its CandidateIndex (candidates=) and takes no finish")
    todo = []
    for u in users:
        for split in splits:
            key = (str(dataset.user_ids[u]), split)
            row = store.rows.get(key)
            if row is None:
                todo.append((u, split))
            elif retry_errors and row["status"].startswith("error"):
                # transient endpoint errors are retried; keep the old row out of the way
                store.rows.pop(key)
                todo.append((u, split))
    errors = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if grounding is None:
            prompts = [prompt_for(dataset, u, s, prompt_fn) for u, s in chunk]
        else:
            lists = [grounding_shortlist(dataset, u, s, grounding, candidates) for u, s in chunk]
            prompts = [numbered_list_prompt(dataset, u, s, prompt_fn, grounding, titles)
                       for (u, s), (_, titles) in zip(chunk, lists)]
        gens = reasoner.generate(prompts, params)
        for i, ((u, s), messages, gen) in enumerate(zip(chunk, prompts, gens)):
            row = (finished_row(reasoner, dataset, u, s, messages, gen, params, role, finish) if grounding is None
                   else numbered_list_row(dataset, u, s, messages, gen, params, role, grounding, *lists[i]))
            store.append(row)
            yield row
            errors = errors + 1 if gen.error else 0
            if errors >= max_consecutive_errors:
                raise EndpointDown(f"{errors} failed calls in a row (last: {gen.error}); finished rows are "
                                   f"kept in {store.path}; fix the endpoint and rerun to resume")


def rationale_text(row: dict, step: int | None = None) -> str | None:
    """The text to encode for a rationale row: one step, or the 3 parsed steps joined, else the raw text.

    Rejected or errored rows give None: a malformed generation is not evidence about the user.
    """
    if row.get("status") != "ok":
        return None
    steps = row.get("steps")
    if step is not None:
        if not steps or len(steps) < step or not str(steps[step - 1]).strip():
            return None
        return str(steps[step - 1]).strip()
    if steps:
        return "\n".join(str(s).strip() for s in steps if str(s).strip())
    text = str(row.get("rationale") or "").strip()
    return text or None
