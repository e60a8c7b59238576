"""How good are rationales? Format, grounding in the catalogue, and agreement with the teacher.

The paper judges rationales only through downstream accuracy (PAPER.md s.8.8); these measures make
the chain inspectable on its own:

* format compliance: share of rows whose text parses into the 3 steps;
* groundedness: share of Step-3 item names that exist in the catalogue (fuzzy title match);
* repeat rate: share of grounded Step-3 items that are already in the user's history; rows of a
  catalogue-grounded Step 3 (``slim.lm.grounding``) carry their items as ids (``step3_items``), which
  are read as they are (in the catalogue, new and distinct by construction: the measures check it);
* edition repeats: share of grounded Step-3 items that are another edition of a history item (a new
  id, the same product: "Far Cry 3" after "Far Cry 3 - Playstation 3"; ``slim.lm.titles.edition_key``),
  which the id-level repeat rate cannot see;
* Step-3 diversity over users: distinct items / items named, and the share of the three most named
  items (a grammar over a catalogue can funnel every user into the same few titles);
* after the Step-3 post-filter (``slim.lm.step3_filter``): distinct new catalogue items left per
  rationale, and the share of rationales left with none;
* target hit: the held-out next item named in Step 3 (title match), or its genre/category named
  in Step 2 (where the dataset has one);
* diversity: share of distinct Step-1 and Step-2 texts among users (per split, then averaged): a
  distilled student can collapse onto a few stock answers ("Action, Adventure, Fantasy" for most
  users), which leaves the fused user vector nearly constant however well-formed each text is.
  The share falls as rows grow (more users, more coincidences): compare files on the same users;
* against a reference (student vs teacher on the same users): ROUGE-L F1 (``rouge-score``; the
  ``evaluate`` metric loaders need the Hub, so the library is used directly), corpus BLEU
  (``sacrebleu``) and the cosine of MiniLM embeddings;
* zero-shot ranking, for both files on those same users: the held-out target among the user's 100
  sampled negatives, scored by the cosine of the rationale's vector and each item's text vector,
  nothing trained (NDCG@10, ties against the target). Which rationale points at the next item
  better, teacher or student, without a model in between. Like the agreement measures it covers
  only rows where both files have an ok row: a student's rejected rows (zeros inside SLIM) are not
  in it, and format compliance above says how many those are;
* zero-shot ranking of a whole file, beside the same ranking by the user's own history (the mean
  text vector of the last 5 items the rationale was written from): does the rationale point at the
  next item better than the titles it read? This is the headroom SLIM has over X+ (item text).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from slim.data.categories import item_categories
from slim.data.dataset import SequentialDataset
from slim.lm.prompts import step3_items
from slim.lm.rationale_file import read_rationales
from slim.lm.titles import TitleMatcher, edition_key

def _genres(dataset: SequentialDataset, item: int) -> list[str]:
    return [c.lower() for c in item_categories(dataset, item)]


def intrinsic_quality(dataset: SequentialDataset, rows: Iterable[dict], matcher: TitleMatcher | None = None) -> dict:
    """Measures that need no reference: format, groundedness, repeats, target hits."""
    rows = list(rows)
    matcher = matcher or TitleMatcher.for_dataset(dataset, "rationale")
    index = dataset.user_index
    n_ok = n_named = n_grounded = n_repeat = n_item_hit = n_genre_hit = n_genre_users = 0
    n_kept = n_empty = 0  # what slim.lm.step3_filter keeps: distinct catalogue items not in the history
    n_dup, named_items = 0, []  # repeats within one Step 3; every catalogue item named, over users
    n_grounded_rows = n_editions = 0
    keys: dict[int, str] = {}  # item -> edition key, computed once per item

    def key(item: int) -> str:
        if item not in keys:
            keys[item] = edition_key(dataset.titles([item])[0])
        return keys[item]

    for r in rows:
        if r.get("status") != "ok" or not r.get("steps"):
            continue
        n_ok += 1
        n_grounded_rows += r.get("step3_items") is not None
        u = index[str(r["user_id"])]
        history = set(dataset.history(u, r["split"]).tolist())
        target = dataset.target(u, r["split"])
        if r.get("step3_items") is not None:  # grounded rows name their items as ids: no re-parsing
            matched = [int(m) for m in r["step3_items"]]
            names = matched
        else:
            names = step3_items(r["steps"][2])
            matched = [m for m in (matcher.item(n) for n in names) if m is not None]
        n_dup += len(matched) - len(set(matched))
        named_items.extend(set(matched))
        n_named += len(names)
        n_grounded += len(matched)
        n_repeat += sum(m in history for m in matched)
        history_keys = {key(h) for h in history}
        n_editions += sum(m not in history and key(m) in history_keys for m in matched)
        kept = {m for m in matched if m not in history}
        n_kept += len(kept)
        n_empty += not kept
        n_item_hit += target in matched
        genres = _genres(dataset, target)
        if genres:
            n_genre_users += 1
            n_genre_hit += any(g in r["steps"][1].lower() for g in genres)
    return {
        "rows": len(rows),
        "format_compliance": n_ok / max(1, len(rows)),
        "step3_items_per_rationale": n_named / max(1, n_ok),
        "groundedness": n_grounded / max(1, n_named),
        "repeat_rate": n_repeat / max(1, n_grounded),
        "step3_edition_repeats": n_editions / max(1, n_grounded),
        "step3_kept_after_filter": n_kept / max(1, n_ok),
        "step3_empty_after_filter": n_empty / max(1, n_ok),
        "target_item_hit": n_item_hit / max(1, n_ok),
        "target_genre_hit": (n_genre_hit / n_genre_users) if n_genre_users else None,
        "step3_duplicates": n_dup / max(1, n_grounded),
        # diversity over users: a grammar over a catalogue can funnel every user into the same few titles
        "step3_distinct_items": len(set(named_items)) / max(1, len(named_items)),
        "step3_top3_share": _top_share(named_items, 3),
        "step3_grounded_rows": n_grounded_rows / max(1, n_ok),
        "step1_distinct": _distinct_share(rows, 0),
        "step2_distinct": _distinct_share(rows, 1),
        "mean_completion_tokens": float(np.mean([r.get("completion_tokens", 0) for r in rows])) if rows else 0.0,
        "mean_seconds": float(np.mean([r.get("seconds", 0) for r in rows])) if rows else 0.0,
    }


def _top_share(items: list[int], k: int) -> float | None:
    """Share of all named items taken by the ``k`` most named ones (1.0: everyone gets the same k)."""
    if not items:
        return None
    counts = np.sort(np.bincount(np.asarray(items, dtype=np.int64)))[::-1]
    return float(counts[:k].sum() / len(items))


def _distinct_share(rows: list[dict], step: int) -> float | None:
    """Distinct (case/space-normalised) texts of one step over rows, per split, averaged over splits."""
    by_split: dict[str, list[str]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("steps"):
            by_split.setdefault(r["split"], []).append(" ".join(r["steps"][step].lower().split()))
    if not by_split:
        return None
    return float(np.mean([len(set(texts)) / len(texts) for texts in by_split.values()]))


def agreement(candidates: list[str], references: list[str], encoder=None) -> dict:
    """Student-vs-teacher text agreement on the same users (paired lists)."""
    from rouge_score import rouge_scorer
    import sacrebleu

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, cand)["rougeL"].fmeasure for cand, ref in zip(candidates, references)]
    bleu = sacrebleu.corpus_bleu(candidates, [references]).score
    out = {"pairs": len(candidates), "rougeL_f1": float(np.mean(rouge)) if rouge else None, "bleu": bleu}
    if encoder is not None and candidates:
        a, b = encoder.encode(candidates), encoder.encode(references)
        out["embedding_cosine"] = float(np.mean(np.sum(a * b, axis=1)))  # encoder output is L2-normalised
    return out


def _zero_shot(dataset: SequentialDataset, rows: list[dict], user_vector, item_vectors: np.ndarray,
               negatives: np.ndarray, k: int) -> float | None:
    """Mean NDCG@k of the rows' targets among their sampled negatives, each (user, split) scored by
    ``user_vector(rows)`` . item text; :func:`slim.eval.metrics.compute_ranks` ranks them, as every report does."""
    import torch

    from slim.eval.metrics import compute_ranks, user_metric
    from slim.lm.rationales import rationale_text

    index = dataset.user_index
    rows = [r for r in rows if rationale_text(r)]
    if not rows:
        return None
    vectors = torch.as_tensor(np.asarray(user_vector(rows)))
    items = torch.as_tensor(item_vectors)
    ranks = []
    for split in ("valid", "test"):
        keep = [i for i, r in enumerate(rows) if r["split"] == split]
        if keep:
            users = np.array([index[str(rows[i]["user_id"])] for i in keep])
            position = {int(u): i for u, i in zip(users, keep)}
            score = lambda batch, _split: vectors[[position[int(u)] for u in batch]] @ items.T  # noqa: E731
            ranks.append(compute_ranks(score, dataset, split, "sampled", users=users, negatives=negatives))
    return float(np.mean(user_metric(np.concatenate(ranks), f"NDCG@{k}")))


def zero_shot_ndcg(dataset: SequentialDataset, rows: list[dict], encoder, item_vectors: np.ndarray,
                   negatives: np.ndarray, k: int = 10) -> float | None:
    """Mean NDCG@k of the target among [target, *negatives[u]] by cosine(rationale, item text)."""
    from slim.lm.rationales import rationale_text

    return _zero_shot(dataset, rows, lambda ok: encoder.encode([rationale_text(r) for r in ok]),
                      item_vectors, negatives, k)


def history_zero_shot_ndcg(dataset: SequentialDataset, rows: list[dict], item_vectors: np.ndarray,
                           negatives: np.ndarray, last: int = 5, k: int = 10) -> float | None:
    """:func:`zero_shot_ndcg` with the mean text vector of the last ``last`` history items in place of
    the rationale, on the same (user, split) rows: the no-LM baseline a rationale has to beat."""
    index = dataset.user_index

    def history_vectors(ok: list[dict]) -> np.ndarray:
        return np.stack([item_vectors[dataset.history(index[str(r["user_id"])], r["split"])[-last:]].mean(axis=0)
                         for r in ok])

    return _zero_shot(dataset, rows, history_vectors, item_vectors, negatives, k)


def quality_report(dataset: SequentialDataset, path: str | Path, reference_path: str | Path | None = None,
                   encoder=None, exclude_users: set[str] | None = None, item_vectors: np.ndarray | None = None,
                   negatives: np.ndarray | None = None, only: set[tuple[str, str]] | None = None) -> dict:
    """Quality of one rationale file; with a reference file, agreement on the users both have.

    ``only``: the (user_id, split) pairs to measure (files compared on the same rows); None: every row.

    ``exclude_users``: user ids left out of the agreement (e.g. the users the student was
    distilled on, so agreement is measured on held-out users only). With ``item_vectors`` and
    ``negatives`` (and an encoder) both files are also ranked zero-shot on those same rows.
    """
    rows = [r for r in read_rationales(path) if only is None or (str(r["user_id"]), r["split"]) in only]
    report = {"file": str(path), **intrinsic_quality(dataset, rows)}
    if encoder is not None and item_vectors is not None and negatives is not None:
        report["zero_shot_ndcg10"] = zero_shot_ndcg(dataset, rows, encoder, item_vectors, negatives)
        report["history_zero_shot_ndcg10"] = history_zero_shot_ndcg(dataset, rows, item_vectors, negatives)
    if reference_path and Path(reference_path).exists() and Path(reference_path) != Path(path):
        refs = {(str(r["user_id"]), r["split"]): r for r in read_rationales(reference_path) if r.get("status") == "ok"}
        both = [(r, refs[k]) for r in rows
                if r.get("status") == "ok" and (k := (str(r["user_id"]), r["split"])) in refs
                and str(r["user_id"]) not in (exclude_users or set())]
        if both:
            report["vs_reference"] = {"reference": str(reference_path),
                                      **agreement([a["rationale"] for a, _ in both], [b["rationale"] for _, b in both],
                                                  encoder)}
            if encoder is not None and item_vectors is not None and negatives is not None:
                report["vs_reference"]["zero_shot_ndcg10"] = zero_shot_ndcg(
                    dataset, [a for a, _ in both], encoder, item_vectors, negatives)
                report["vs_reference"]["reference_zero_shot_ndcg10"] = zero_shot_ndcg(
                    dataset, [b for _, b in both], encoder, item_vectors, negatives)
    return report
