"""Step-3 post-filter (slim.lm.step3_filter) on real ML-100K users and titles."""
from __future__ import annotations

from slim.lm.titles import TitleMatcher
from slim.lm.step3_filter import clean_steps, filter_step3
from slim_eval.inputs import _texts_for
from slim_eval.variants import run_name, spec


def _case(ds, u=0):
    hist = ds.history(u, "valid")
    target = ds.target(u, "valid")
    seen, new = ds.titles([hist[-1]])[0], ds.titles([target])[0]
    return hist, target, seen, new


def test_filter_keeps_new_catalogue_items_only(ml100k):
    hist, target, seen, new = _case(ml100k)
    step3 = f"1. {new.lower()}\n2. {seen}\n3. Totally Invented Movie Zeta\n4. {new}"
    out = filter_step3(step3, TitleMatcher.for_dataset(ml100k, "rationale"), set(hist.tolist()))
    assert out.kept == [target]  # fuzzy-matched, de-duplicated
    assert out.repeated == [int(hist[-1])]
    assert out.invented == ["Totally Invented Movie Zeta"]


def test_clean_steps_uses_the_history_of_the_rows_split(ml100k):
    """The validation item is history for the test row but not for the valid row."""
    u = 0
    valid_item = ml100k.target(u, "valid")
    title = ml100k.titles([valid_item])[0]
    row = {"user_id": str(ml100k.user_ids[u]), "status": "ok", "steps": ["likes x", "dramas", f"1. {title}"]}
    m = TitleMatcher.for_dataset(ml100k, "rationale")
    assert clean_steps({**row, "split": "valid"}, u, ml100k, m)[2] == ml100k.items.at[valid_item, "title"]
    assert clean_steps({**row, "split": "test"}, u, ml100k, m)[2] == ""  # already consumed by then
    assert clean_steps({**row, "split": "valid", "status": "rejected: x"}, u, ml100k, m) is None


def test_clean_variant_drops_users_whose_step3_is_all_noise(ml100k):
    hist0, _, seen0, new0 = _case(ml100k, 0)
    _, _, seen1, _ = _case(ml100k, 1)
    rows = {(str(ml100k.user_ids[0]), "valid"): {"status": "ok", "split": "valid", "user_id": str(ml100k.user_ids[0]),
                                                  "steps": ["a", "b", f"1. {new0}\n2. {seen0}"]},
            (str(ml100k.user_ids[1]), "valid"): {"status": "ok", "split": "valid", "user_id": str(ml100k.user_ids[1]),
                                                  "steps": ["a", "b", f"1. {seen1}\n2. Invented Film Omega"]}}
    raw = _texts_for(ml100k, rows, "valid", 3, clean_step3=False)
    clean = _texts_for(ml100k, rows, "valid", 3, clean_step3=True)
    assert [u for u, _ in raw] == [0, 1]
    assert clean == [(0, new0)]  # user 1 named only a watched film and an invented one: no vector


def test_clean_variant_spec():
    s = spec("match-step3-clean")
    assert s.clean_step3 and s.step == 3 and s.rationales == "student" and not s.has_backbone
    assert run_name("sasrec", "match-step3-clean", 2) == "none-match-step3clean-seed2"
    assert not spec("match-step3").clean_step3
    whole = spec("match-clean")
    assert whole.clean_step3 and whole.step is None and run_name("none", "match-clean", 0) == "none-match-clean-seed0"
