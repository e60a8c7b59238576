"""Post-filter of Step 3: keep only catalogue items the user has not consumed yet.

Why: a free-text Step 3 names items badly: some names are not in the catalogue, and many of those
that are were already in the user's history (``python -m slim_eval --rationales`` measures both per
rationale file, in ``rationale-quality.json``). A text encoder then embeds invented titles and "more
of what you watched", which is noise for ranking *new* items.
The filter maps each name to the catalogue (the ``rationale`` rule of ``slim.lm.titles``, which
also measures groundedness),
drops invented and already-seen items, and writes the kept items' canonical titles. The history
used is the one the rationale was written from, so the filter never looks at the target.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from slim.data.dataset import SequentialDataset
from slim.lm.prompts import step3_items
from slim.lm.titles import TitleMatcher


@dataclass
class Step3Filtered:
    kept: list[int] = field(default_factory=list)  # item indices: in the catalogue, not in the history
    invented: list[str] = field(default_factory=list)  # names with no catalogue match
    repeated: list[int] = field(default_factory=list)  # catalogue items already in the history


def filter_step3(step3: str, matcher: TitleMatcher, history: set[int]) -> Step3Filtered:
    out = Step3Filtered()
    for name in step3_items(step3):
        item = matcher.item(name)
        if item is None:
            out.invented.append(name)
        elif item in history:
            out.repeated.append(item)
        elif item not in out.kept:
            out.kept.append(item)
    return out


def clean_steps(row: dict, user: int, dataset: SequentialDataset, matcher: TitleMatcher) -> list[str] | None:
    """The row's 3 steps with Step 3 replaced by the kept items' catalogue titles ("" if none kept).

    ``user``: the dataset's index of ``row["user_id"]``; the history is that of ``row["split"]``.
    """
    steps = row.get("steps")
    if row.get("status") != "ok" or not steps or len(steps) < 3:
        return None
    history = set(dataset.history(user, row["split"]).tolist())
    kept = filter_step3(str(steps[2]), matcher, history).kept
    titles = dataset.items["title"]
    return [str(steps[0]), str(steps[1]), "; ".join(str(titles.at[i]) for i in kept)]
