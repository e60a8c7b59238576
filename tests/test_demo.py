"""slim.demo without llama.cpp: a scripted student stands in, so the service logic is tested fast.

The real student is exercised by tests/test_app_api.py and tests/test_browser.py.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from slim.demo.config import TEACHER_HELP
from slim.demo.display import MATCH_LABEL, UNTRAINED_LABEL, Column, format_steps
from slim.demo.ranking import rationale_text
from slim.demo.reports import find_reports
from slim.demo.requests import Request
from slim.demo.service import DemoService
from slim.demo.uploads.limits import UploadError

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


def test_every_dataset_runs_the_newest_student_on_its_grounded_prompt(service, tmp_path):
    """The live student is v4 (movies and games, grounded prompt) for every dataset; an adapter missing
    from a checkout is said in the student column, with its path."""
    from slim.artifacts.layout import adapter_prompt, live_student_adapter

    assert service.adapter_path("ml-100k") == service.root / "assets/student-v4/adapter.gguf"
    assert service.adapter_path("amazon-video-games") == service.adapter_path("ml-100k")
    repo = DemoService(data_dir=service.data_dir)  # the repository root: the adapter ships with it
    assert repo.student_distilled("ml-100k") and repo.student_distilled("amazon-video-games")
    assert adapter_prompt(repo.adapter_path("ml-100k")) == "grounded"
    assert not service.student_distilled("ml-100k")  # the fixture's empty root has no assets/
    last = list(service.run(service.resolve("ml-100k", "196")))[-1]
    assert f"not distilled yet: {live_student_adapter('ml-100k')} is missing" in last.student.markdown()


def test_no_checkpoints_means_untrained_label(service):
    assert service.checkpoints("ml-100k") == []
    assert service.available_datasets() == ["ml-100k"]
    ranked = service.rank(service.resolve("ml-100k", "196"), RATIONALE)
    assert [r.variant for r in ranked] == [UNTRAINED_LABEL]
    assert ranked[0].note.startswith("no fitted checkpoint for ml-100k: cosine similarity")


def test_top_excludes_padding_and_history(service):
    req = Request("ml-100k", ["a"], [1], full_history=[1, 2, 3], target=4)
    scores = np.arange(service.dataset("ml-100k").n_items + 1, dtype=float)[::-1]  # item 0 best, then 1, 2...
    r = service._top(scores, req, "v", "n")
    assert r.item_idx[:2] == [4, 5] and r.target_rank == 1


class ScriptedTeacher(ScriptedStudent):
    model_name = "scripted-teacher"

    def stream(self, messages, params=None):
        for word in super().stream(messages, params):
            time.sleep(0.03)  # slower than the student, like the real one
            yield word


@pytest.fixture(scope="module")
def fitted(ml100k, data_dir, tmp_path_factory):
    """A root with real (1-epoch) SASRec `id`, SASRec `slim` and `match` checkpoints under runs/, as
    `slim_train fit` writes them: the path the Space takes with assets/<ds>/checkpoints."""
    from slim.recommenders.fit_config import FitConfig
    from slim.recommenders.train import fit

    root = tmp_path_factory.mktemp("fitted-root")
    svc = DemoService(root=root, data_dir=data_dir)
    script_student(svc, ScriptedStudent())
    svc._teacher_checked = True
    item_text = svc.item_text("ml-100k")
    rng = np.random.default_rng(0)  # rationale vectors: any fixed [users, 384] matrix trains the fusion
    user_text = {s: rng.standard_normal((ml100k.n_users, item_text.shape[1])).astype(np.float32)
                 for s in ("valid", "test")}
    ckpts = root / "runs" / "ml-100k" / "checkpoints"
    dirs = {}
    for cfg, kw in ((FitConfig("sasrec", "id", epochs=1, eval_every=1), {}),
                    (FitConfig("sasrec", "slim", epochs=1, eval_every=1), dict(item_text=item_text, user_text=user_text)),
                    (FitConfig("none", "match", epochs=1, eval_every=1), dict(item_text=item_text, user_text=user_text))):
        fit(ml100k, cfg, ckpts, progress=False, **kw)
        dirs[cfg.variant] = next(d.name for d in ckpts.iterdir() if d.name.startswith(f"{cfg.backbone}-{cfg.variant}-"))
    return svc, dirs


def test_dataset_user_is_ranked_by_a_fitted_slim_checkpoint(fitted):
    """The primary list is the fitted SLIM model (named in its note), the plain SASRec beside it."""
    svc, dirs = fitted
    ranked = svc.rank(svc.resolve("ml-100k", "196"), RATIONALE)
    assert [r.variant for r in ranked] == ["SLIM (SASRec)", "SASRec (plain backbone)"]
    assert ranked[0].note.startswith(f"fitted SLIM checkpoint `{dirs['slim']}`")
    assert ranked[1].note.startswith(f"fitted checkpoint `{dirs['id']}`")
    assert all(len(r.item_idx) == 10 for r in ranked)
    assert ranked[0].item_idx != ranked[1].item_idx or ranked[0].scores != ranked[1].scores
    assert not svc.refused
    models = svc.models_markdown("ml-100k")
    assert f"fitted SLIM (SASRec) `{dirs['slim']}` for dataset users" in models
    assert f"fitted text matching `{dirs['match']}` for custom histories" in models


def test_slim_fusions_compete_on_validation_and_ablations_come_after(tmp_path):
    """The Space's SLIM is the checkpoint validation prefers between concatenation and the gate
    (as the reports choose), never an ablation such as ``noleak`` however it validates."""
    from slim.demo.checkpoints import Checkpoint
    from slim.demo.ranking import RankingMixin

    def ck(tag: str, valid: float) -> Checkpoint:
        return Checkpoint(tmp_path / (tag or "concat"), {}, "sasrec", "slim", tag, 0, valid)

    pool = [ck("", 0.10), ck("gated", 0.12), ck("noleak", 0.30), ck("", 0.11)]
    order = [(c.tag, c.valid_ndcg10) for c in RankingMixin._best(pool, "slim")]
    assert order == [("gated", 0.12), ("", 0.11), ("", 0.10), ("noleak", 0.30)]
    pool[1].valid_ndcg10 = 0.05
    assert [c.tag for c in RankingMixin._best(pool, "slim")][:1] == [""]


def test_custom_history_is_ranked_by_the_fitted_match_projection(fitted):
    svc, dirs = fitted
    req = svc.resolve("ml-100k", ["Toy Story", "Fargo", "Star Wars"])
    ranked = svc.rank(req, RATIONALE)
    assert [r.variant for r in ranked] == [MATCH_LABEL]
    assert ranked[0].note.startswith(f"fitted text-matching checkpoint `{dirs['match']}`")
    assert not set(ranked[0].item_idx) & set(req.full_history)


def test_refused_checkpoint_is_logged_once_and_the_next_is_used(fitted, tmp_path, caplog):
    """A checkpoint whose item texts differ (here: a stored key edited) is refused with one log line
    saying why, remembered (not retried per request), and the next best SLIM checkpoint ranks."""
    import json
    import logging
    import shutil

    svc, dirs = fitted
    root = tmp_path / "root"
    shutil.copytree(svc.root / "runs", root / "runs")
    ckpts = root / "runs" / "ml-100k" / "checkpoints"
    stale = ckpts / (dirs["slim"] + "-stale")
    shutil.copytree(ckpts / dirs["slim"], stale)
    record = json.loads((stale / "config.json").read_text())
    record["key"]["item_text"] = {**record["key"]["item_text"], "sha256": "0000000000000000"}
    record["valid_metrics"]["NDCG@10"] = 0.99  # tried first
    (stale / "config.json").write_text(json.dumps(record))
    other = DemoService(root=root, data_dir=svc.data_dir)
    other._datasets, other._catalogues, other._item_text, other._encoder = (
        svc._datasets, svc._catalogues, svc._item_text, svc._encoder)
    with caplog.at_level(logging.WARNING, logger="slim.demo"):
        for _ in range(2):
            ranked = other.rank(other.resolve("ml-100k", "196"), RATIONALE)
            assert ranked[0].variant == "SLIM (SASRec)" and f"`{dirs['slim']}`" in ranked[0].note
    lines = [r.getMessage() for r in caplog.records if r.name == "slim.demo"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"checkpoint runs/ml-100k/checkpoints/{stale.name} not used: ValueError: ")
    assert "item_text: the texts or encoder differ" in lines[0] and "\n" not in lines[0]
    assert list(other.refused_for("ml-100k")) == [str(stale)]
    info = other.describe(other.resolve("ml-100k", "196"), ranked)
    assert f"_not used:_ `{stale.name}`" in info


def test_old_format_checkpoint_is_refused_with_the_reason(fitted, tmp_path):
    """A format-1 checkpoint (item texts keyed by the vector bytes) is refused, saying so, not silently."""
    import json
    import shutil

    from slim.demo.checkpoints import CheckpointRefused

    svc, dirs = fitted
    old = tmp_path / "runs" / "ml-100k" / "checkpoints" / (dirs["match"] + "-format1")
    shutil.copytree(svc.root / "runs" / "ml-100k" / "checkpoints" / dirs["match"], old)
    record = json.loads((old / "config.json").read_text())
    record["key"].update(format=1, item_text="0a22353a75e21e13")
    (old / "config.json").write_text(json.dumps(record))
    other = DemoService(root=tmp_path, data_dir=svc.data_dir)
    other._datasets, other._item_text, other._encoder = svc._datasets, svc._item_text, svc._encoder
    ck = other.checkpoints("ml-100k")[0]
    with pytest.raises(CheckpointRefused, match="checkpoint format 1 keys its item texts by the bytes"):
        other._module("ml-100k", ck, other.item_text("ml-100k"))
    ranked = other.rank(other.resolve("ml-100k", ["Toy Story", "Fargo", "Star Wars"]), RATIONALE)
    assert ranked[0].variant == UNTRAINED_LABEL
    assert ranked[0].note.startswith("1 fitted checkpoint(s) were refused")


def test_custom_history_streams_a_live_teacher_beside_the_student(service):
    svc = DemoService(root=service.root, data_dir=service.data_dir)
    svc._datasets, svc._catalogues, svc._item_text = service._datasets, service._catalogues, service._item_text
    svc._encoder = service._encoder
    script_student(svc, ScriptedStudent())
    svc._teacher, svc._teacher_checked = ScriptedTeacher("Step 1: a teacher's view.\nStep 2: Drama.\nStep 3: Babe"), True
    seen, last = [], None
    for last in svc.run(svc.resolve("ml-100k", ["Toy Story", "Fargo", "Star Wars"]), min_interval=0):
        seen.append((last.teacher.status, last.teacher.text))  # the columns are live objects: copy now
    assert any(status == "running" and 0 < len(text) < 40 for status, text in seen)  # streamed, not dumped
    assert last.teacher.status == "done" and last.teacher.model == "scripted-teacher"
    assert "#### Step 1\na teacher's view." in last.teacher.markdown() and "tok/s" in last.teacher.markdown()
    assert last.student.status == "done"


def test_teacher_source_endpoint_first_then_installed_local(monkeypatch, service):
    import slim.demo.models as demo

    svc = DemoService(root=service.root, data_dir=service.data_dir)
    monkeypatch.setattr(demo, "local_teacher_installed", lambda: True)
    monkeypatch.setenv("SLIM_TEACHER_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SLIM_TEACHER_MODEL", "qwen-test")
    assert svc.teacher_source() == ("endpoint", "qwen-test at http://127.0.0.1:9/v1")
    monkeypatch.delenv("SLIM_TEACHER_BASE_URL")
    monkeypatch.delenv("SLIM_TEACHER_LOCAL", raising=False)
    kind, path = svc.teacher_source()
    assert kind == "local" and path.endswith("Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf")
    monkeypatch.setenv("SLIM_TEACHER_LOCAL", "0")
    assert svc.teacher_source() is None and "SLIM_TEACHER_LOCAL=0" in svc.teacher_help()
    monkeypatch.delenv("SLIM_TEACHER_LOCAL")
    monkeypatch.setattr(demo, "local_teacher_installed", lambda: False)
    assert svc.teacher_source() is None
    assert svc.teacher_help() == TEACHER_HELP and "python -m slim_train models --teacher" in TEACHER_HELP


def test_find_reports_lists_every_shipped_report():
    """On the repository's own assets/reports, not a fixture: the Results tab shows all of them."""
    names = [r.dataset for r in find_reports()]
    assert {"ml-100k", "amazon-video-games", "amazon-video-games-u500", "amazon-industrial-scientific"} <= set(names)
    assert names[0] == "ml-100k" and len(names) == len(set(names))
    games = next(r for r in find_reports() if r.dataset == "amazon-video-games")
    assert games.source.parts[-3:] == ("reports", "amazon-video-games", "report.md") and games.markdown.strip()


def test_find_reports_prefers_a_fresh_run(tmp_path):
    (tmp_path / "assets" / "reports" / "ml-100k").mkdir(parents=True)
    (tmp_path / "assets" / "reports" / "ml-100k" / "report.md").write_text("shipped")
    (tmp_path / "runs" / "ml-100k").mkdir(parents=True)
    (tmp_path / "runs" / "ml-100k" / "report.md").write_text("fresh")
    assert [(r.dataset, r.markdown) for r in find_reports(tmp_path)] == [("ml-100k", "fresh")]


def test_picker_offers_the_amazon_sets_whose_files_ship(data_dir):
    """The repository's artefacts (student-games adapter, rationales) + the raw files -> in the picker."""
    for name in ("amazon-video-games", "amazon-industrial-scientific"):
        if not (data_dir / name / "raw").is_dir():
            pytest.skip(f"{data_dir / name / 'raw'} not found")
    svc = DemoService(data_dir=data_dir)
    assert svc.available_datasets() == ["ml-100k", "amazon-video-games", "amazon-industrial-scientific"]
    st = svc.dataset_status("amazon-video-games")
    assert st.student == "assets/student-v4/adapter.gguf"
    assert "assets/rationales/amazon-video-games/teacher.jsonl" in st.rationales
    assert "`assets/student-v4/adapter.gguf`" in svc.models_markdown("amazon-video-games")


def test_picker_leaves_out_a_dataset_without_raw_files_and_says_why(data_dir, tmp_path):
    (tmp_path / "ml-100k").symlink_to(data_dir / "ml-100k")
    svc = DemoService(data_dir=tmp_path)  # repository root: the artefacts ship, the Amazon raw files do not
    assert svc.available_datasets() == ["ml-100k"]
    md = svc.datasets_markdown()
    assert "| amazon-video-games | no | `assets/student-v4/adapter.gguf` |" in md
    assert (f"- **amazon-video-games** is not in the picker: raw files not found in `{tmp_path}/amazon-video-games/raw` "
            "(Games.item, Games-6k.test.inter); there is no downloader for the Amazon data") in md
    with pytest.raises(UploadError, match="Unknown dataset"):
        svc.resolve("amazon-video-games", "1")


class ScriptedGroundedTeacher:
    """Stands in for the in-process llama.cpp teacher: it has ``complete(..., grammar=)``; a grammar-bound
    call answers the grammar's first title (as a grammar forces a real model into one of them), and a
    free call ends where its first stop string would (as llama.cpp's stop does)."""

    model_name = "scripted-grounded-teacher"

    def __init__(self):
        self.messages, self.grammars = [], []

    def complete(self, messages, prefix, params=None, stop=(), grammar=None, reset=False):
        import json as _json

        from slim.lm.reasoners import Generation

        self.messages.append(messages)
        if grammar is None:
            text = "Step 1: likes 90s films.\nStep 2: Drama, Comedy.\n"
            cut = min([text.find(s) for s in stop if s in text] or [len(text)])
            return Generation(text[:cut], 12, 300, 0.01, self.model_name)
        self.grammars.append(grammar)
        first = _json.loads(grammar.split("::=", 1)[1].split(" | ")[0].strip())
        return Generation(first, 5, 300, 0.01, self.model_name)


def test_live_local_teacher_speaks_the_domain_and_grounds_step3_in_the_catalogue(service):
    from slim.lm.titles import display_title

    svc = DemoService(root=service.root, data_dir=service.data_dir)
    svc._datasets, svc._catalogues, svc._item_text = service._datasets, service._catalogues, service._item_text
    svc._encoder = service._encoder
    script_student(svc, ScriptedStudent())
    teacher = ScriptedGroundedTeacher()
    svc._teacher, svc._teacher_checked = teacher, True
    req = svc.resolve("ml-100k", ["Toy Story", "Fargo", "Star Wars", "Babe"])
    last = list(svc.run(req, min_interval=0))[-1]
    prompt = teacher.messages[0][-1]["content"]
    assert "A user watched the movies" in prompt and "<candidates>" in prompt  # domain-aware, shortlist shown
    assert len(teacher.grammars) == 2 + 3 and last.teacher.status == "done"  # 2 Step-2 genres, 3 Step-3 items
    ds = svc.dataset("ml-100k")
    assert len(last.teacher.step3_items) == 3 and not set(last.teacher.step3_items) & set(req.item_idx)
    shown_items = last.teacher.markdown().split("#### Step 3", 1)[1].strip().splitlines()
    assert shown_items == [f"{n}. {display_title(ds.items.at[i, 'title'])}"
                           for n, i in enumerate(last.teacher.step3_items, 1)]
    assert "chosen under a grammar" in last.teacher.markdown()
    # the student keeps the generic wording the shipped students were distilled on
    from slim.lm.prompts import student_messages

    assert svc._memo and any(k.startswith("student:") for k in svc._memo)
    assert "interacted with" in student_messages(req.titles)[-1]["content"]


def test_the_students_step3_is_grounded_when_its_engine_takes_a_grammar(service):
    """The llama.cpp student names only catalogue items new to the user (the same shortlist, under a
    grammar), with the prompt its adapter was distilled on (no candidates block)."""
    svc = DemoService(root=service.root, data_dir=service.data_dir)
    svc._datasets, svc._catalogues, svc._item_text = service._datasets, service._catalogues, service._item_text
    svc._encoder = service._encoder
    student = script_student(svc, ScriptedGroundedTeacher())
    svc._teacher_checked = True  # no teacher: the student alone
    req = svc.resolve("ml-100k", ["Toy Story", "Fargo", "Star Wars", "Babe"])
    last = list(svc.run(req, min_interval=0))[-1]
    # ML-100K grounds Step 2 too (GroundingConfig.for_dataset): 2 genre grammars, then 3 item grammars
    assert len(student.grammars) == 5 and last.student.status == "done"
    assert len(set(last.student.step3_items)) == 3 and not set(last.student.step3_items) & set(req.item_idx)
    from slim.data.categories import item_categories
    from slim.lm.prompts import parse_steps

    step2 = parse_steps(last.student.text).steps[1]
    assert step2.startswith("Genres to look for next: ")
    named = step2.removeprefix("Genres to look for next: ").rstrip(".").split(", ")
    ds = svc.dataset("ml-100k")
    assert len(named) == 2 and set(named) <= {c for i in req.item_idx for c in item_categories(ds, i)}
    assert "<candidates>" not in student.messages[0][-1]["content"]
    assert last.ranked  # the grounded rationale ranks the catalogue


def test_the_space_serves_the_users_the_shipped_amazon_fits_cover(data_dir):
    """A checkpoint is bound to its users' data fingerprint: the Space's Games dataset is the reported
    3,000-user seeded sample, the same one `slim_eval --dataset all` evaluates."""
    import pytest

    if not (data_dir / "amazon-video-games" / "raw").is_dir():
        pytest.skip("no Amazon Games raw files")
    from slim.artifacts.reported_runs import reported_user_samples
    from slim.data.dataset import load_dataset, sample_users
    from slim.demo.service import DemoService
    from slim.eval.metrics import dataset_fingerprint

    svc = DemoService(data_dir=data_dir)
    assert "amazon-video-games" in svc.available_datasets()  # its student and rationales ship
    served = svc.dataset("amazon-video-games")
    full = load_dataset("amazon-video-games", data_dir)
    n, seed = reported_user_samples()["amazon-video-games"]
    assert served.n_users == n
    assert dataset_fingerprint(served) == dataset_fingerprint(full.subset_users(sample_users(full, n, seed)))


def test_a_plain_cached_teacher_row_gives_way_to_the_live_teacher(service, data_dir, tmp_path):
    """The plain prompt's row ("books by Harper Lee") is not shown beside the grounded student when a live
    teacher can write a grounded one; with no live teacher it is shown, and labelled as such."""
    import json

    rationales = tmp_path / "assets" / "rationales" / "ml-100k"
    rationales.mkdir(parents=True)
    plain = {"user_id": "196", "status": "ok", "role": "teacher", "dataset": "ml-100k", "split": "test",
             "rationale": "Step 1: books by Harper Lee"}
    (rationales / "teacher.jsonl").write_text(json.dumps(plain) + "\n")

    def fresh(teacher):
        svc = DemoService(root=tmp_path, data_dir=data_dir)
        svc._datasets, svc._catalogues, svc._item_text = service._datasets, service._catalogues, service._item_text
        svc._encoder = service._encoder
        script_student(svc, ScriptedStudent())
        svc._teacher, svc._teacher_checked = teacher, True
        return svc

    svc = fresh(ScriptedTeacher("Step 1: likes comedies.\nStep 2: Comedy.\nStep 3: Babe"))
    last = list(svc.run(svc.resolve("ml-100k", "196"), min_interval=0))[-1]
    assert last.teacher.status == "done" and last.teacher.model == "scripted-teacher"
    assert "likes comedies" in last.teacher.text and "Harper Lee" not in last.teacher.text
    assert "plain prompt" in last.teacher.note
    svc = fresh(None)
    last = list(svc.run(svc.resolve("ml-100k", "196"), min_interval=0))[-1]
    assert last.teacher.status == "cached" and "Harper Lee" in last.teacher.text
    assert "written with the plain prompt" in last.teacher.note


def test_the_student_runs_the_merged_gguf_when_it_was_built_after_the_adapter(data_dir, tmp_path):
    """runs/merged/<adapter folder>-q8_0.gguf (slim_train merge) replaces base GGUF + LoRA, unless stale."""
    import os
    import shutil

    pytest.importorskip("llama_cpp")
    from slim.artifacts.layout import REPO_ROOT, live_student_adapter
    from slim.lm.weights import student_gguf_path

    svc = DemoService(root=tmp_path, data_dir=data_dir)
    adapter = svc.adapter_path("ml-100k")
    adapter.parent.mkdir(parents=True)
    shutil.copy(REPO_ROOT / live_student_adapter("ml-100k"), adapter)
    assert svc.merged_student_path("ml-100k") is None
    merged = tmp_path / "runs" / "merged" / f"{adapter.parent.name}-q8_0.gguf"
    merged.parent.mkdir(parents=True)
    shutil.copy(student_gguf_path(), merged)  # a stand-in: any GGUF of the student's architecture
    os.utime(adapter, (1_000, 1_000))
    assert svc.merged_student_path("ml-100k") == merged
    student = svc.student("ml-100k")
    assert student.model_path == str(merged) and student.lora_path is None and "merged" in student.model_name
    os.utime(merged, (500, 500))  # the adapter changed after the merge: stale
    assert DemoService(root=tmp_path, data_dir=data_dir).merged_student_path("ml-100k") is None


def test_cached_teacher_prefers_the_grounded_row_over_the_plain_one(data_dir, tmp_path):
    import json

    rationales = tmp_path / "assets" / "rationales" / "ml-100k"
    rationales.mkdir(parents=True)
    base = {"user_id": "196", "status": "ok", "role": "teacher", "dataset": "ml-100k"}
    plain = {**base, "split": "test", "rationale": "Step 1: books by Harper Lee"}
    grounded = {**base, "split": "valid", "rationale": "Step 1: likes comedies", "step3_items": [1, 2, 3]}
    (rationales / "teacher.jsonl").write_text(json.dumps(plain) + "\n")
    svc = DemoService(root=tmp_path, data_dir=data_dir)
    assert svc.cached_teacher("ml-100k", "196")["rationale"] == plain["rationale"]  # plain only: plain
    (rationales / "teacher-grounded.jsonl").write_text(json.dumps(grounded) + "\n")
    svc = DemoService(root=tmp_path, data_dir=data_dir)
    row = svc.cached_teacher("ml-100k", "196")
    assert row["rationale"] == grounded["rationale"]
    assert row["_source"] == "assets/rationales/ml-100k/teacher-grounded.jsonl"
    assert svc.cached_teacher("ml-100k", "1") is None


def test_recommendation_table_shows_titles_without_html_entities(data_dir):
    """Amazon Games titles are stored with entities ("&rsquo;"); the Space's table shows the text."""
    if not (data_dir / "amazon-video-games" / "raw").is_dir():
        pytest.skip(f"{data_dir / 'amazon-video-games' / 'raw'} not found")
    from slim.demo.display import Ranked

    svc = DemoService(data_dir=data_dir)
    titles = svc.dataset("amazon-video-games").items["title"].astype(str)
    escaped = [int(i) for i in titles.index[titles.str.contains("&rsquo;|&amp;")][:3]]
    plain = titles[~titles.str.contains("&")].head(3).tolist()
    req = svc.resolve("amazon-video-games", plain)
    table = svc.table(req, [Ranked("match", escaped, [3.0, 2.0, 1.0])])
    assert len(table) == 3 and not table["title"].str.contains("&rsquo;|&amp;").any()
    assert table["title"].str.contains("\u2019|&").all()


def test_the_space_never_offers_another_edition_of_an_owned_item(games, data_dir, tmp_path):
    """An Amazon history with "X - Platform" gets a shortlist without X's other editions (ids alone let
    them through: the same game for another console)."""
    from slim.artifacts.layout import REPO_ROOT
    from slim.lm.titles import edition_key

    svc = DemoService(root=REPO_ROOT, data_dir=data_dir)  # the shipped assets offer the Games catalogue
    by_key: dict[str, list[int]] = {}
    for i, t in zip(games.items.index, games.items["title"]):
        by_key.setdefault(edition_key(t), []).append(int(i))
    owned = next(items[0] for items in by_key.values() if len(items) > 2)
    others = [items[0] for items in by_key.values() if len(items) == 1][:2]  # uploads need 3 titles
    req = svc.resolve("amazon-video-games", games.titles([*others, owned]))
    g = svc.grounding(req)
    assert g.cfg.exclude_editions and len(g.shortlist) == g.cfg.n_candidates
    assert edition_key(games.titles([owned])[0]) not in {edition_key(t) for t in games.titles(g.shortlist)}
    without = svc.candidate_index("amazon-video-games").candidates(req.item_idx, g.cfg.n_candidates, g.cfg.recent)
    assert edition_key(games.titles([owned])[0]) in {edition_key(t) for t in games.titles(without)}
