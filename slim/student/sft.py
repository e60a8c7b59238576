"""Distillation examples: (student prompt from the user's history -> teacher rationale), tokenised.

The prompt is *rebuilt* from the dataset, not copied from the teacher row: the student sees the
simplified prompt (``student_messages``), the teacher saw the full one. Both are built from the
same history, ``dataset.history(u, row["split"])`` (the train prefix for split ``valid``), which is
checked against the row's ``history_len``, so the pair can never silently mix two users or leak
a target.

Tokenisation = prompt ids (chat template + generation prompt, exactly what the student sees at
inference) + completion ids (rationale + end-of-turn). Labels are -100 on the prompt, so the loss
is on rationale tokens only. Concatenating the two tokenisations (rather than tokenising the whole
chat at once) keeps training and inference token-identical at the boundary.

Grounded rows (``prompt="grounded"``, rows with ``grounding``): the student prompt names the
dataset's domain and shows the same candidate shortlist the teacher chose its Step-3 items from,
recomputed from the same history with the row's recorded ``GroundingConfig`` (slim.lm.grounding), so
the student learns to pick among the candidates it will be shown at inference (``reason --step3
grammar``).

Several datasets: rows of a dataset other than the run's primary one get the key
``"<dataset>/<user_id>"`` (:func:`example_key`), so two datasets' user ids never collide in the
held-out split, the checkpoint's row list or the card.

Over-long examples: the oldest history titles are dropped first (the prompt shows at most the 20
most recent anyway), keeping the whole rationale and its end-of-turn token, because a truncated
target would teach the student to never finish Step 3. Only if ``min_history`` titles still do not
fit is the rationale cut (counted in ``BuildStats``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Sequence

from slim.lm.prompts import DEFAULT_MAX_HISTORY, Messages, domain_for, student_messages

IGNORE_INDEX = -100


@dataclass
class Example:
    user_id: str
    input_ids: list[int]
    labels: list[int]
    n_history: int  # titles shown in the prompt


@dataclass
class BuildStats:
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    shortened_history: int = 0
    truncated_target: int = 0
    prompt_tokens: int = 0
    target_tokens: int = 0
    picks_outside_shortlist: int = 0  # teacher Step-3 items the recomputed shortlist lacks (float drift)

    def __add__(self, other: "BuildStats") -> "BuildStats":
        """The stats of two datasets' examples together (one student on several datasets)."""
        skipped = dict(self.skipped)
        for k, v in other.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        return BuildStats(self.rows + other.rows, skipped, self.shortened_history + other.shortened_history,
                          self.truncated_target + other.truncated_target, self.prompt_tokens + other.prompt_tokens,
                          self.target_tokens + other.target_tokens,
                          self.picks_outside_shortlist + other.picks_outside_shortlist)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"rows": self.rows, "skipped": dict(self.skipped), "shortened_history": self.shortened_history,
                "truncated_target": self.truncated_target, "prompt_tokens": self.prompt_tokens,
                "target_tokens": self.target_tokens,
                "picks_outside_shortlist": self.picks_outside_shortlist}


def completion_suffix(tokenizer) -> str:
    """What closes an assistant turn in this chat template (``<|im_end|>`` for SmolLM2/Qwen)."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": "XyZ"}],
                                          tokenize=False)
    tail = probe.split("XyZ", 1)[1]
    end = tail.strip("\n ")
    return end.split("\n")[0] if end else (tokenizer.eos_token or "")


def encode_pair(tokenizer, titles: Sequence[str], target: str, max_len: int, max_history: int = DEFAULT_MAX_HISTORY,
                min_history: int = 3, messages: Callable[..., Messages] = student_messages,
                ) -> tuple[list[int], list[int], int, bool]:
    """(input_ids, labels, titles shown, target truncated) for one example within ``max_len`` tokens.

    ``messages(titles, max_history=n)``: the student prompt builder (plain, or with domain and candidates)."""
    target_ids = tokenizer(target.strip() + completion_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    shown = min(len(titles), max_history) if max_history else len(titles)
    while True:
        text = tokenizer.apply_chat_template(messages(titles, max_history=shown), tokenize=False,
                                             add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(target_ids) <= max_len or shown <= min(min_history, len(titles)):
            break
        # drop a few oldest titles at a time: cheap and enough (titles are ~10-20 tokens)
        shown = max(min(min_history, len(titles)), shown - 2)
    truncated = len(prompt_ids) + len(target_ids) > max_len
    target_ids = target_ids[: max(0, max_len - len(prompt_ids))]
    return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids, shown, truncated


PROMPTS = ("plain", "grounded")


def example_key(row: dict, primary: str) -> str:
    """The id of a teacher row's example: its user id, prefixed by its dataset unless that is ``primary``."""
    name = str(row.get("dataset") or primary)
    return str(row["user_id"]) if name == primary else f"{name}/{row['user_id']}"


def trained_user_ids(keys: Iterable, primary: str, dataset_name: str) -> set[str]:
    """The user ids of ``dataset_name`` among example keys (a card's ``users``) of a run on ``primary``."""
    out = set()
    for key in keys:
        key = str(key[0] if isinstance(key, (list, tuple)) else key)
        name, _, uid = key.rpartition("/")
        if (name or primary) == dataset_name:
            out.add(uid)
    return out


class ShortlistFor:
    """The grounded student prompt of one dataset: its domain and, per row, the teacher's shortlist."""

    def __init__(self, dataset, encoder=None):
        from slim.lm.encoders import TextEncoder, item_text_matrix

        self.dataset, self.domain = dataset, domain_for(dataset.name)
        self.vectors = item_text_matrix(dataset, encoder or TextEncoder())
        self._indexes: dict = {}

    def titles(self, row: dict, history) -> tuple[list[str], list[int], int]:
        """(candidate titles in display form, their item ids, k) as the row's grounding config makes them."""
        from slim.lm.grounding import CandidateIndex, GroundingConfig

        conf = {k: v for k, v in row["grounding"].items() if k != "candidates"}
        cfg = GroundingConfig(**conf)  # a row written before a field existed gets its old meaning
        key = (cfg.popularity_weight, cfg.hubness_weight, cfg.hubness_k, cfg.recent)
        if key not in self._indexes:
            self._indexes[key] = CandidateIndex.for_config(self.dataset, self.vectors, cfg)
        index = self._indexes[key]
        ids = index.candidates(history, cfg.n_candidates, cfg.recent, cfg.exclude_editions)
        return [index.display[i] for i in ids], ids, cfg.k


def build_examples(dataset, rows: Iterable[dict], tokenizer, max_len: int = 512,
                   max_history: int = DEFAULT_MAX_HISTORY, prompt: str = "plain", primary: str | None = None,
                   shortlist: ShortlistFor | None = None) -> tuple[list[Example], BuildStats]:
    """Examples for the ``ok`` teacher rows whose user is in ``dataset``; reasons for the others.

    ``prompt="grounded"``: rows with a ``grounding`` record get the domain-aware student prompt with the
    teacher's candidate shortlist (``shortlist`` reuses an encoded catalogue); other rows are skipped,
    since a free Step 3 would teach the student to ignore its candidates.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    primary = primary or dataset.name
    index = dataset.user_index
    stats, out = BuildStats(), []
    if prompt == "grounded" and shortlist is None:
        shortlist = ShortlistFor(dataset)
    for row in rows:
        if str(row.get("dataset") or primary) != dataset.name:
            stats.skip("row of another dataset")
            continue
        if row.get("status") != "ok":
            stats.skip("status not ok")
            continue
        u = index.get(str(row["user_id"]))
        if u is None:
            stats.skip("user not in dataset")
            continue
        history = dataset.history(u, row["split"])
        if "history_len" in row and int(row["history_len"]) != len(history):
            stats.skip("history length differs from the teacher's")
            continue
        messages = student_messages
        if prompt == "grounded":
            if not row.get("grounding") or not row.get("step3_items"):
                stats.skip("no grounded Step 3")
                continue
            titles, ids_, k = shortlist.titles(row, history)
            stats.picks_outside_shortlist += sum(int(i) not in ids_ for i in row["step3_items"])
            messages = partial(student_messages, domain=shortlist.domain, candidates=titles, k=k)
        ids, labels, shown, truncated = encode_pair(tokenizer, dataset.titles(history), row["rationale"], max_len,
                                                    max_history, messages=messages)
        if all(lab == IGNORE_INDEX for lab in labels):
            stats.skip("prompt alone exceeds max_len")
            continue
        stats.rows += 1
        stats.shortened_history += shown < min(len(history), max_history)
        stats.truncated_target += truncated
        n_target = sum(lab != IGNORE_INDEX for lab in labels)
        stats.prompt_tokens += len(ids) - n_target
        stats.target_tokens += n_target
        out.append(Example(example_key(row, primary), ids, labels, shown))
    return out, stats


def is_validation_user(user_id: str, fraction: float, salt: str = "slim-val") -> bool:
    """Stable held-out split by hash of the user id: a user stays on its side as the data grows."""
    h = int(hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def collate(batch: Sequence[Example], pad_id: int) -> dict:
    """Right-padded tensors (training pads on the right; the loss ignores padding via -100)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
