"""slim.demo without llama.cpp: a scripted student stands in, so the service logic is tested fast.

The real student is exercised by tests/test_app_api.py and tests/test_browser.py.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from slim.demo import Column, DemoService, Request, format_steps, rationale_text
from slim.uploads import UploadError

RATIONALE = "Step 1: likes science fiction.\nStep 2: Sci-Fi, Action.\nStep 3: Star Wars, Alien"


class ScriptedStudent:
    model_name = "scripted-student"

    def __init__(self, text: str = RATIONALE, fail: bool = False):
        self.text, self.fail, self.calls = text, fail, 0

    def stream(self, messages, params=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("model exploded")
        for word in self.text.split(" "):
            time.sleep(0.001)
            yield word + " "


def script_student(svc: DemoService, student: ScriptedStudent, dataset: str = "ml-100k") -> ScriptedStudent:
    """Stand the scripted student in for the dataset's llama.cpp student (loaded once per adapter)."""
    svc._students[str(svc.adapter_path(dataset))] = student
    return student


@pytest.fixture(scope="module")
def service(ml100k, data_dir, tmp_path_factory):
    svc = DemoService(root=tmp_path_factory.mktemp("demo-root"), data_dir=data_dir)  # no runs/, no assets/
    script_student(svc, ScriptedStudent())
    svc._teacher_checked = True  # no teacher configured
    return svc


def test_format_steps_separates_partial_and_full_text():
    md = format_steps(RATIONALE)
    assert md.count("#### Step") == 3 and md.count("---") == 2
    assert format_steps("Step 1: likes <b>bold</b>") == "#### Step 1\nlikes &lt;b&gt;bold&lt;/b&gt;"
    assert format_steps("# not a heading") == "\\# not a heading"
    assert rationale_text(RATIONALE) == "likes science fiction.\nSci-Fi, Action.\nStar Wars, Alien"


def test_column_header_reports_speed():
    c = Column("student", model="m", text="x", status="done", first_token_s=0.5, seconds=2.5, tokens=41)
    assert "20 tok/s" in c.header() and "first token 0.50 s" in c.header()


def test_dataset_user_run_streams_then_ranks(service):
    req = service.resolve("ml-100k", "196")
    assert req.is_dataset_user and req.target == service.dataset("ml-100k").target(req.user_idx, "test")
    updates = list(service.run(req))
    assert len(updates) >= 3 and updates[-1].done and not updates[0].done
    last = updates[-1]
    assert last.student.status == "done" and "scripted-student" in last.student.markdown()
    assert last.teacher.status == "unavailable" and "SLIM_TEACHER_BASE_URL" in last.teacher.markdown()
    ranked = last.ranked[0]
    assert "untrained" in ranked.variant and len(ranked.item_idx) == 10
    assert not set(ranked.item_idx) & set(req.full_history)  # history never recommended
    assert ranked.scores == sorted(ranked.scores, reverse=True)
    assert ranked.target_rank is not None and "Held-out next item" in last.info
    table = service.table(req, last.ranked)
    assert list(table.columns) == ["rank", "variant", "title", "score", "next_item"] and len(table) == 10


def test_custom_history_and_memo(service):
    req = service.resolve("ml-100k", ["Toy Story", "Fargo", "Star Wars"])
    assert req.target is None and req.titles == ["Toy Story", "Fargo", "Star Wars"]
    calls = service.student("ml-100k").calls
    first = list(service.run(req))[-1]
    again = list(service.run(req))[-1]
    assert service.student("ml-100k").calls == calls + 1  # greedy decoding: the same prompt is answered once
    assert again.student.text == first.student.text and again.student.from_memory
    assert [r.item_idx for r in again.ranked] == [r.item_idx for r in first.ranked]


@pytest.mark.parametrize("value, message", [
    ("", "No user chosen"), ("nobody", "not in ml-100k"), ([], "No titles"), ("[oops", "not a JSON list"),
])
def test_bad_api_inputs(service, value, message):
    with pytest.raises(UploadError, match=message):
        service.resolve("ml-100k", value)
    with pytest.raises(UploadError, match="Unknown dataset"):
        service.resolve("movies-9000", "196")


def test_student_failure_is_shown_not_raised(service, ml100k):
    svc = DemoService(root=service.root, data_dir=service.data_dir)
    svc._datasets, svc._catalogues, svc._item_text = service._datasets, service._catalogues, service._item_text
    svc._encoder, svc._teacher_checked = service._encoder, True
    script_student(svc, ScriptedStudent(fail=True))
    last = list(svc.run(svc.resolve("ml-100k", "186")))[-1]
    assert last.student.status == "error" and "model exploded" in last.student.markdown()
    assert len(last.ranked[0].item_idx) == 10  # falls back to ranking from the history titles


def test_each_dataset_runs_its_own_student(service, tmp_path):
    """Games is answered by the v3 adapter its rationales and checkpoints came from, not ML-100K's v2;
    an adapter missing from a checkout is said in the student column, with its path."""
    from slim.artifacts import student_adapter

    assert service.adapter_path("ml-100k") == service.root / "assets/student/adapter.gguf"
    assert service.adapter_path("amazon-video-games") == service.root / "assets/student-games/adapter.gguf"
    repo = DemoService(data_dir=service.data_dir)  # the repository root: both adapters ship with it
    assert repo.student_distilled("ml-100k") and repo.student_distilled("amazon-video-games")
    assert repo.adapter_path("ml-100k") != repo.adapter_path("amazon-video-games")
    assert not service.student_distilled("ml-100k")  # the fixture's empty root has no assets/
    last = list(service.run(service.resolve("ml-100k", "196")))[-1]
    assert f"not distilled yet: {student_adapter('ml-100k')} is missing" in last.student.markdown()


def test_no_checkpoints_means_untrained_label(service):
    assert service.checkpoints("ml-100k") == []
    assert service.available_datasets() == ["ml-100k"]


def test_top_excludes_padding_and_history(service):
    req = Request("ml-100k", ["a"], [1], full_history=[1, 2, 3], target=4)
    scores = np.arange(service.dataset("ml-100k").n_items + 1, dtype=float)[::-1]  # item 0 best, then 1, 2...
    r = service._top(scores, req, "v", "n")
    assert r.item_idx[:2] == [4, 5] and r.target_rank == 1


def test_dataset_user_is_ranked_by_a_fitted_slim_checkpoint(ml100k, data_dir, tmp_path):
    """A real (1-epoch) SLIM SASRec checkpoint under runs/ is loaded and ranks a dataset user, with
    the plain SASRec beside it: the path the Space takes with assets/ml-100k/checkpoints."""
    from slim.recommenders.train import FitConfig, fit

    svc = DemoService(root=tmp_path, data_dir=data_dir)
    script_student(svc, ScriptedStudent())
    svc._teacher_checked = True
    item_text = svc.item_text("ml-100k")
    rng = np.random.default_rng(0)  # rationale vectors: any fixed [users, 384] matrix trains the fusion
    user_text = {s: rng.standard_normal((ml100k.n_users, item_text.shape[1])).astype(np.float32)
                 for s in ("valid", "test")}
    ckpts = tmp_path / "runs" / "ml-100k" / "checkpoints"
    fit(ml100k, FitConfig("sasrec", "id", epochs=1, eval_every=1), ckpts, progress=False)
    fit(ml100k, FitConfig("sasrec", "slim", epochs=1, eval_every=1), ckpts, item_text=item_text,
        user_text=user_text, progress=False)
    ranked = svc.rank(svc.resolve("ml-100k", "196"), RATIONALE)
    assert [r.variant for r in ranked] == ["SLIM (SASRec)", "SASRec (plain backbone)"]
    assert all(len(r.item_idx) == 10 for r in ranked)
