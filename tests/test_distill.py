"""distill: label masking, a 2-3 step run on real ML-100K histories, resume == uninterrupted run (with
dropout, after a kill between the checkpoint renames or between a log row and its checkpoint).

Real models (the converted SmolLM2 folder), tiny settings: 8 users, 5 titles, 256 tokens, batch 2.
"""
from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
torch.set_num_threads(1)

from slim.lm.prompts import student_messages  # noqa: E402
from slim.student.sft import IGNORE_INDEX, build_examples, encode_pair  # noqa: E402
from slim.student.hf_model import student_hf_path  # noqa: E402
from slim.lm.weights import STUDENT_NAME  # noqa: E402


@pytest.fixture(scope="module")
def ds(ml100k):
    return ml100k


@pytest.fixture(scope="module")
def base():
    return str(student_hf_path())


@pytest.fixture(scope="module")
def tokenizer(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def teacher_rows(ds, n: int = 8) -> list[dict]:
    """Synthetic teacher rows for real users: the rationale is written here, from the history."""
    rows = []
    for u in range(n):
        hist = ds.history(u, "valid")
        titles = ds.titles(hist[-3:])
        text = (f"Step 1: The user enjoys films like {titles[-1]}.\n"
                f"Step 2: Drama and comedy.\nStep 3: {titles[0]}; {titles[1]}")
        rows.append({"user_id": str(ds.user_ids[u]), "user_idx": u, "split": "valid", "model": "test-teacher",
                     "history_len": int(len(hist)), "rationale": text, "status": "ok"})
    rows.append({**rows[0], "user_id": str(ds.user_ids[n]), "status": "rejected: missing Step 3"})
    return rows


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_labels_mask_the_prompt(ds, tokenizer):
    titles = ds.titles(ds.history(0, "valid"))
    target = "Step 1: likes sci-fi.\nStep 2: Sci-Fi.\nStep 3: Alien (1979)"
    ids, labels, shown, truncated = encode_pair(tokenizer, titles, target, max_len=512, max_history=5)
    prompt = tokenizer.apply_chat_template(student_messages(titles, max_history=5), tokenize=False,
                                           add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert all(lab != IGNORE_INDEX for lab in labels[n_prompt:])
    assert tokenizer.decode(ids[:n_prompt]) == prompt
    assert tokenizer.decode(labels[n_prompt:]) == target + "<|im_end|>"  # the student learns to stop
    assert shown == 5 and not truncated


def test_long_examples_drop_old_titles_before_cutting_the_rationale(ds, tokenizer):
    titles = ds.titles(ds.history(0, "valid"))
    target = "Step 1: x.\nStep 2: y.\nStep 3: z"
    ids, labels, shown, truncated = encode_pair(tokenizer, titles, target, max_len=120, max_history=20)
    assert len(ids) <= 120 and shown < 20 and not truncated
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]).endswith("<|im_end|>")


def test_build_examples_skips_rows_that_do_not_match(ds, tokenizer):
    rows = teacher_rows(ds, 3)
    rows.append({**rows[1], "user_id": str(ds.user_ids[5]), "history_len": 3})  # wrong history: never trained
    examples, stats = build_examples(ds, rows, tokenizer, max_len=256, max_history=5)
    assert len(examples) == 3
    assert stats.skipped == {"status not ok": 1, "history length differs from the teacher's": 1}


def run_cli(tmp_path, teacher, *extra) -> dict:
    """A tiny distillation with the DEFAULT LoRA dropout (0.05): resume equality must hold with dropout on."""
    from slim_train.__main__ import main

    main(["distill", "--dataset", "ml-100k", "--out", str(tmp_path), "--teacher-file", str(teacher),
          "--batch-size", "2", "--max-len", "256", "--max-history", "5", "--epochs", "2",
          "--val-fraction", "0.25", "--save-every", "1", "--no-gguf", "--warmup-steps", "1", *extra])
    return [json.loads(x) for x in (tmp_path / "distill" / "log.jsonl").read_text().splitlines()]


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


class Killed(BaseException):
    """Stands in for kill -9: nothing in train() catches it, nothing is saved on the way out."""


def assert_same_adapter(a, b):
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0)  # bit-identical: same RNG, data, optimizer


def test_distill_runs_resumes_and_writes_an_adapter(ds, tmp_path, monkeypatch):
    import slim_train.distill.checkpoint as distill

    teacher = tmp_path / "teacher.jsonl"
    write_jsonl(teacher, teacher_rows(ds, 8))

    # uninterrupted: 3 steps
    a = tmp_path / "a"
    log_a = run_cli(a, teacher, "--max-steps", "3")
    steps = [r for r in log_a if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in steps)
    start = log_a[0]
    assert start["event"] == "start" and start["train_examples"] + start["val_examples"] == 8
    assert start["config"]["lora_dropout"] == 0.05
    assert start["data"]["skipped"] == {}  # the rejected row never reaches the example builder
    assert math.isfinite(log_a[1]["val_loss"])  # the initial validation loss

    adapter = a / "distill" / "adapter"
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["r"] == 16 and conf["lora_alpha"] == 32 and conf["base_model_name_or_path"] == STUDENT_NAME
    assert sorted(conf["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["steps"] == 3 and math.isfinite(metrics["val_loss_final"])
    assert (adapter / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve, drawn
    from huggingface_hub import ModelCard

    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == STUDENT_NAME and card.data.library_name == "peft"

    # killed between the two renames of the step-2 checkpoint swap: only checkpoint.old (step 1) and a
    # complete checkpoint.tmp (step 2) are on disk
    b = tmp_path / "b"
    calls = []
    real_rename = distill._rename

    def crashing_rename(src, dst):
        calls.append((src.name, dst.name))
        if len(calls) == 3:  # step 1: tmp->checkpoint; step 2: checkpoint->old, then tmp->checkpoint
            raise Killed
        real_rename(src, dst)

    monkeypatch.setattr(distill, "_rename", crashing_rename)
    with pytest.raises(Killed):
        run_cli(b, teacher, "--max-steps", "3")
    monkeypatch.setattr(distill, "_rename", real_rename)
    on_disk = sorted(p.name for p in (b / "distill").iterdir() if p.name.startswith("checkpoint"))
    assert on_disk == ["checkpoint.old", "checkpoint.tmp"]
    # the same command resumes from the newest complete one (step 2), not from step 0
    log_b = run_cli(b, teacher, "--max-steps", "3")
    resume = [r for r in log_b if r.get("event") == "resume"]
    assert resume and resume[0]["step"] == 2
    assert [r["step"] for r in log_b if "loss" in r] == [1, 2, 3]
    assert sorted(p.name for p in (b / "distill").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    # same data order, lr, optimizer state and dropout RNG: the resumed run equals the uninterrupted one
    assert_same_adapter(adapter, b / "distill" / "adapter")
    assert [r["loss"] for r in log_b if "loss" in r] == [r["loss"] for r in steps]


def test_resume_after_a_step_logged_but_not_checkpointed_equals_the_uninterrupted_run(ds, tmp_path):
    """Stopped at step 2 with the row of step 3 already in log.jsonl (a kill between the log and the save):
    the rerun redoes step 3 with the same dropout masks and keeps one row per step."""
    teacher = tmp_path / "teacher.jsonl"
    write_jsonl(teacher, teacher_rows(ds, 8))
    log_a = run_cli(tmp_path / "a", teacher, "--max-steps", "3")
    c = tmp_path / "c"
    run_cli(c, teacher, "--max-steps", "2")
    state = json.loads((c / "distill" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["data_order"]["epoch"] == 0
    rng = json.loads((c / "distill" / "checkpoint" / "rng.json").read_text())
    assert len(rng) == 1 and {"torch", "numpy", "python"} <= rng[0].keys()
    with open(c / "distill" / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "epoch": 1.0, "loss": 9.99, "seconds": 100.0}) + "\n")
    log_c = run_cli(c, teacher, "--max-steps", "3")
    train_c = [r for r in log_c if "loss" in r]
    assert [r["step"] for r in train_c] == [1, 2, 3]
    assert [r["loss"] for r in train_c] == [r["loss"] for r in log_a if "loss" in r]
    assert_same_adapter(tmp_path / "a" / "distill" / "adapter", c / "distill" / "adapter")
    metrics = json.loads((c / "distill" / "adapter" / "metrics.json").read_text())
    assert metrics["seconds_per_step"] == pytest.approx(sum(r["seconds"] for r in train_c) / 3)


def test_recover_checkpoint_picks_the_newest_complete_folder(tmp_path):
    from slim_train.distill.checkpoint import COMPLETE, recover_checkpoint

    def folder(name, step, complete=True):
        d = tmp_path / name
        d.mkdir()
        (d / "state.json").write_text(json.dumps({"step": step}))
        if complete:
            (d / COMPLETE).write_text(f"{step}\n")

    ckpt = tmp_path / "checkpoint"
    folder("checkpoint.old", 1)
    folder("checkpoint.tmp", 2)  # killed between the renames
    assert "checkpoint.tmp" in recover_checkpoint(ckpt)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

    folder("checkpoint.tmp", 3, complete=False)  # killed while writing: ignored and removed
    assert recover_checkpoint(ckpt) is None
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

    folder("checkpoint.tmp", 4)  # complete, killed before the first rename: newer than checkpoint
    recover_checkpoint(ckpt)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4

    ckpt.rename(tmp_path / "checkpoint.old")  # killed after the first rename with a half tmp
    folder("checkpoint.tmp", 5, complete=False)
    assert "checkpoint.old" in recover_checkpoint(ckpt)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_trim_log_drops_rows_after_the_checkpoint(tmp_path):
    from slim_train.distill.checkpoint import trim_log

    log = tmp_path / "log.jsonl"
    rows = [{"event": "start"}, {"step": 0, "val_loss": 2.0}, {"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.4},
            {"step": 3, "loss": 1.3, "val_loss": 1.9}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert trim_log(log, 2) == 2  # step 3 and the torn line
    assert [json.loads(x) for x in log.read_text().splitlines()] == rows[:4]


def test_init_adapter_continues_from_an_existing_student(ds, tmp_path):
    """Domain adaptation: a run started from adapter A begins exactly where A ended (same held-out loss)."""
    teacher = tmp_path / "teacher.jsonl"
    write_jsonl(teacher, teacher_rows(ds, 8))
    log_a = run_cli(tmp_path / "a", teacher, "--max-steps", "2")
    adapter_a = tmp_path / "a" / "distill" / "adapter"
    final_a = [r["val_loss"] for r in log_a if "val_loss" in r][-1]

    log_b = run_cli(tmp_path / "b", teacher, "--max-steps", "1", "--init-adapter", str(adapter_a))
    initial_b = [r["val_loss"] for r in log_b if "val_loss" in r][0]
    assert initial_b == pytest.approx(final_a, rel=1e-5)
    fresh_initial = [r["val_loss"] for r in log_a if "val_loss" in r][0]
    assert initial_b < fresh_initial  # it did not start from a fresh (zero-delta) LoRA

    with pytest.raises(SystemExit, match="different LoRA shape.*--lora-r"):
        run_cli(tmp_path / "c", teacher, "--max-steps", "1", "--init-adapter", str(adapter_a), "--lora-r", "8")
    with pytest.raises(SystemExit, match="expected a peft folder"):
        run_cli(tmp_path / "d", teacher, "--max-steps", "1", "--init-adapter", str(tmp_path))


def test_train_can_change_precision_within_one_process():
    """accelerate's state is process-wide: a second distillation in the same process (a test session,
    a notebook) with another precision must not fail (seen on an AVX512 box: `auto` -> bf16, then `no`)."""
    from slim_train.distill.device import make_accelerator

    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("no").mixed_precision == "no"
    assert make_accelerator("no").mixed_precision == "no"  # same precision: accelerate's state is reused


def test_auto_precision_is_bf16_only_where_the_cpu_has_native_bf16():
    """torch says "AVX512" for CPUs with and without AVX512-BF16; bf16 autocast is 15x slower than fp32
    where it is emulated, so `auto` reads the CPU flags."""
    import torch

    from slim_train.distill.device import cpu_flags, resolve_precision

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU's precision")
    info = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    assert cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f", "avx512_vnni"}
    assert resolve_precision("auto", cpu_flags(info)) == "no"  # AVX512 without BF16
    assert resolve_precision("auto", cpu_flags(info.replace("avx512_vnni", "avx512_vnni avx512_bf16"))) == "bf16"
    assert resolve_precision("auto", {"amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_precision("no", {"avx512_bf16"}) == "no"  # an explicit choice is kept


def test_grounded_examples_show_the_domain_and_the_teachers_shortlist(ds, tokenizer):
    """A grounded teacher row becomes a student prompt that names movies and lists the very candidates
    the teacher's Step-3 items were chosen from (recomputed from the same history)."""
    from pathlib import Path

    from slim.lm.titles import display_title

    shipped = Path(__file__).resolve().parents[1] / "assets" / "rationales" / "ml-100k" / "teacher-grounded.jsonl"
    rows = [json.loads(x) for x in shipped.read_text().splitlines()[:3]]
    rows.append({**teacher_rows(ds, 1)[0]})  # a free Step 3: not a grounded example
    examples, stats = build_examples(ds, rows, tokenizer, max_len=1024, prompt="grounded")
    assert len(examples) == 3 and stats.skipped == {"no grounded Step 3": 1}
    assert stats.picks_outside_shortlist == 0
    titles = {int(i): display_title(t) for i, t in zip(ds.items.index, ds.items["title"])}
    for ex, row in zip(examples, rows):
        prompt = tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
        assert "movies a user watched" in prompt and "<candidates>" in prompt
        for item in row["step3_items"]:
            assert f"- {titles[item]}" in prompt  # the teacher's pick is among the candidates shown
    plain, _ = build_examples(ds, rows[:1], tokenizer, max_len=1024)
    assert "<candidates>" not in tokenizer.decode(plain[0].input_ids)


def test_one_student_on_two_datasets_keys_the_second_datasets_users(ds, scientific, tmp_path):
    """Rows of a second dataset train the same student; their users are "<dataset>/<id>" in the card,
    so a user id shared by the two datasets is two examples and the held-out sets stay apart."""
    from slim.student.sft import trained_user_ids

    teacher_a, teacher_b = tmp_path / "ml.jsonl", tmp_path / "sci.jsonl"
    write_jsonl(teacher_a, [{**r, "dataset": "ml-100k"} for r in teacher_rows(ds, 4)])
    write_jsonl(teacher_b, [{**r, "dataset": scientific.name} for r in teacher_rows(scientific, 4)])
    from slim_train.__main__ import main

    main(["distill", "--dataset", "ml-100k", "--out", str(tmp_path / "run"), "--teacher-file", str(teacher_a),
          str(teacher_b), "--batch-size", "2", "--max-len", "256", "--max-history", "5", "--epochs", "1",
          "--val-fraction", "0.25", "--no-gguf", "--max-steps", "1", "--no-initial-eval"])
    metrics = json.loads((tmp_path / "run" / "distill" / "adapter" / "metrics.json").read_text())
    assert metrics["also_datasets"] == [scientific.name]
    keys = [u[0] for u in metrics["users"]]
    assert len(keys) == 8 and sum(k.startswith(f"{scientific.name}/") for k in keys) == 4
    assert trained_user_ids(metrics["users"], "ml-100k", "ml-100k") == {str(ds.user_ids[u]) for u in range(4)}
    assert trained_user_ids(metrics["users"], "ml-100k", scientific.name) == {
        str(scientific.user_ids[u]) for u in range(4)}
