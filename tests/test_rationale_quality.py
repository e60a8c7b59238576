"""Rationale quality measures on real ML-100K users with rationale text written by the test."""
from __future__ import annotations

import json

import pytest

from slim.lm.rationale_quality import agreement, intrinsic_quality, quality_report
from slim.lm.titles import TitleMatcher


def _row(ds, u, split, text, steps):
    return {"user_id": str(ds.user_ids[u]), "split": split, "status": "ok" if steps else "rejected: missing Step 1",
            "rationale": text, "steps": steps, "completion_tokens": 10, "seconds": 1.0}


def test_catalogue_matching_is_fuzzy_but_not_loose(ml100k):
    m = TitleMatcher.for_dataset(ml100k, "rationale")
    assert m.item("Toy Story") == ml100k.title_to_idx["Toy Story"]
    assert m.item("toy story!") == ml100k.title_to_idx["Toy Story"]
    assert m.item("A completely invented film title 2077") is None


def test_groundedness_repeats_and_target_hits(ml100k):
    u = 0
    hist = ml100k.history(u, "valid")
    target = ml100k.target(u, "valid")
    seen_title, target_title = ml100k.titles([hist[-1]])[0], ml100k.titles([target])[0]
    genre = ml100k.items.at[target, "genre"].split()[0]
    step3 = f"1. {target_title}\n2. {seen_title}\n3. Totally Invented Movie Zeta"
    rows = [_row(ml100k, u, "valid", "...", ["likes films", f"{genre} films", step3]),
            _row(ml100k, 1, "valid", "no steps", None)]
    q = intrinsic_quality(ml100k, rows)
    assert q["format_compliance"] == 0.5
    assert q["groundedness"] == pytest.approx(2 / 3)
    assert q["repeat_rate"] == pytest.approx(1 / 2)
    assert q["target_item_hit"] == 1.0 and q["target_genre_hit"] == 1.0
    assert q["step3_kept_after_filter"] == 1.0 and q["step3_empty_after_filter"] == 0.0  # only the target survives


def test_diversity_counts_distinct_steps_per_split(ml100k):
    same = ["likes action", "Categories: Action, Adventure", "1. X"]
    rows = [_row(ml100k, u, "valid", "...", same) for u in range(3)]
    rows.append(_row(ml100k, 3, "valid", "...", ["likes documentaries", "categories:  ACTION, adventure", "1. Y"]))
    rows += [_row(ml100k, u, "test", "...", [f"likes genre {u}", f"Categories: {u}", "1. Z"]) for u in range(2)]
    q = intrinsic_quality(ml100k, rows)
    # valid: Step 1 has 2 distinct of 4, Step 2 1 of 4 (case and spacing do not count); test: 2 of 2
    assert q["step1_distinct"] == pytest.approx((2 / 4 + 1) / 2)
    assert q["step2_distinct"] == pytest.approx((1 / 4 + 1) / 2)


def test_agreement_identical_texts_score_max():
    texts = ["Step 1: likes action. Step 2: thrillers. Step 3: Heat, Speed."] * 3
    a = agreement(texts, texts)
    assert a["rougeL_f1"] == pytest.approx(1.0) and a["bleu"] == pytest.approx(100.0)
    b = agreement(["completely different words here"] * 3, texts)
    assert b["rougeL_f1"] < 0.2 and b["bleu"] < 5


def test_quality_report_pairs_users_and_excludes_training_users(ml100k, tmp_path):
    steps = ["a", "b", "1. Toy Story"]
    text = "Step 1: a\nStep 2: b\nStep 3: 1. Toy Story"
    for name in ("student", "teacher"):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for u in range(4):
                f.write(json.dumps(_row(ml100k, u, "valid", text, steps)) + "\n")
    rep = quality_report(ml100k, tmp_path / "student.jsonl", tmp_path / "teacher.jsonl",
                         exclude_users={str(ml100k.user_ids[0])})
    assert rep["vs_reference"]["pairs"] == 3 and rep["format_compliance"] == 1.0


def test_zero_shot_ranking_rewards_a_rationale_that_names_the_target(ml100k, tmp_path):
    """Real MiniLM and real negatives: naming the held-out item beats an off-topic text, with no training."""
    from slim.lm.encoders import TextEncoder, item_text_matrix
    from slim.eval.metrics import sampled_negatives
    from slim.lm.rationale_quality import zero_shot_ndcg

    enc = TextEncoder(cache_dir=tmp_path)
    items, negatives = item_text_matrix(ml100k, enc), sampled_negatives(ml100k, 100, 0, cache_dir=tmp_path)
    users = range(30)

    def rows(text_for) -> list[dict]:
        return [{"user_id": str(ml100k.user_ids[u]), "split": "test", "status": "ok",
                 "steps": ["s1", "s2", text_for(u)]} for u in users]

    named = zero_shot_ndcg(ml100k, rows(lambda u: ml100k.titles([ml100k.target(u, "test")])[0]), enc, items, negatives)
    off_topic = zero_shot_ndcg(ml100k, rows(lambda u: "kitchen sink plumbing supplies"), enc, items, negatives)
    assert named > 0.6 and named > off_topic + 0.3
    assert zero_shot_ndcg(ml100k, [], enc, items, negatives) is None


def test_history_baseline_ranks_the_same_rows_from_the_titles_the_rationale_read(ml100k, tmp_path):
    from slim.lm.encoders import TextEncoder, item_text_matrix
    from slim.eval.metrics import sampled_negatives
    from slim.lm.rationale_quality import history_zero_shot_ndcg, quality_report

    enc = TextEncoder(cache_dir=tmp_path)
    items, negatives = item_text_matrix(ml100k, enc), sampled_negatives(ml100k, 100, 0, cache_dir=tmp_path)
    rows = [{"user_id": str(ml100k.user_ids[u]), "split": "test", "status": "ok", "rationale": "x",
             "steps": ["a", "b", ml100k.titles([ml100k.target(u, "test")])[0]]} for u in range(30)]
    base = history_zero_shot_ndcg(ml100k, rows, items, negatives)
    assert 0 <= base <= 1
    rejected = [{**r, "status": "rejected: missing Step 3"} for r in rows]
    assert history_zero_shot_ndcg(ml100k, rejected, items, negatives) is None  # same rows as the rationale side
    path = tmp_path / "student.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = quality_report(ml100k, path, encoder=enc, item_vectors=items, negatives=negatives)
    assert rep["history_zero_shot_ndcg10"] == pytest.approx(base)
    assert rep["zero_shot_ndcg10"] > base  # a rationale naming the target beats the history's titles


def test_grounded_rows_are_read_by_their_item_ids_and_measured_for_diversity(ml100k):
    def grounded(u, items):
        row = _row(ml100k, u, "valid", "...", ["likes films", "drama", "\n".join(ml100k.titles(items))])
        return {**row, "step3_items": items}

    h0, h1 = set(ml100k.history(0, "valid").tolist()), set(ml100k.history(1, "valid").tolist())
    new = [i for i in range(1, ml100k.n_items + 1) if i not in h0 | h1][:4]
    rows = [grounded(0, new[:3]), grounded(1, [new[0], new[1], new[3]])]
    q = intrinsic_quality(ml100k, rows)
    assert q["groundedness"] == 1.0 and q["repeat_rate"] == 0.0 and q["step3_duplicates"] == 0.0
    assert q["step3_grounded_rows"] == 1.0
    assert q["step3_distinct_items"] == pytest.approx(4 / 6)  # 4 distinct items among 6 named
    assert q["step3_top3_share"] == pytest.approx(5 / 6)  # new[0], new[1] twice + one of the rest
    seen = sorted(h0)[0]
    q = intrinsic_quality(ml100k, [grounded(0, [seen, new[0], new[0]])])
    assert q["repeat_rate"] == pytest.approx(1 / 3) and q["step3_duplicates"] == pytest.approx(1 / 3)


def test_edition_key_joins_editions_but_not_sequels_or_remakes():
    from slim.lm.titles import edition_key

    assert edition_key("Far Cry 3 - Playstation 3") == edition_key("Far Cry 3")
    assert edition_key("Super Mario Galaxy (Nintendo Selects)") == edition_key("Super Mario Galaxy")
    assert edition_key("The Legend of Zelda: Twilight Princess HD - Wii U") == edition_key("The Legend of Zelda: Twilight Princess")
    assert edition_key("Fallout 3: Game of the Year Edition") == edition_key("Fallout 3")
    assert edition_key("Super Mario Galaxy 2") != edition_key("Super Mario Galaxy")
    assert edition_key("Final Fantasy X-2") != edition_key("Final Fantasy X")
    assert edition_key("Batman - Arkham City") != edition_key("Batman - Arkham Asylum")  # a subtitle, not a platform
    assert edition_key("Sabrina (1954)") != edition_key("Sabrina (1995)")  # a remake is another film


def test_another_edition_of_a_history_item_is_counted_apart_from_repeats(games):
    """A grounded Step 3 can name a new id that is the same product as one the user bought: the id-level
    repeat rate is 0 by construction, the edition measure sees it."""
    from slim.lm.titles import edition_key

    by_key: dict[str, list[int]] = {}
    for i, t in zip(games.items.index, games.items["title"]):
        by_key.setdefault(edition_key(t), []).append(int(i))
    pairs = {a: b for items in by_key.values() if len(items) > 1 for a, b in [items[:2]]}
    user, owned = next((u, h) for u in range(games.n_users)
                       for h in games.history(u, "valid").tolist() if h in pairs
                       and pairs[h] not in set(games.history(u, "valid").tolist()))
    history = set(games.history(user, "valid").tolist())
    unrelated = next(i for i in range(1, games.n_items + 1) if i not in history and i not in pairs
                     and edition_key(games.titles([i])[0]) not in {edition_key(t) for t in games.titles(list(history))})
    row = {**_row(games, user, "valid", "...", ["likes games", "action", "..."]), "step3_items": [pairs[owned], unrelated]}
    q = intrinsic_quality(games, [row])
    assert q["repeat_rate"] == 0.0
    assert q["step3_edition_repeats"] == pytest.approx(1 / 2)
