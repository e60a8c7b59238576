"""distill: label masking, a 2-3 step run on real ML-100K histories, resume == uninterrupted run.

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

from slim.prompts import student_messages  # noqa: E402
from slim.sft import IGNORE_INDEX, build_examples, encode_pair  # noqa: E402
from slim.student import student_hf_path  # noqa: E402
from slim.weights import STUDENT_NAME  # noqa: E402


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
    from slim_train.__main__ import main

    main(["distill", "--dataset", "ml-100k", "--out", str(tmp_path), "--teacher-file", str(teacher),
          "--batch-size", "2", "--max-len", "256", "--max-history", "5", "--epochs", "2", "--lora-dropout", "0",
          "--val-fraction", "0.25", "--save-every", "1", "--no-gguf", "--warmup-steps", "1", *extra])
    return [json.loads(x) for x in (tmp_path / "distill" / "log.jsonl").read_text().splitlines()]


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_distill_runs_resumes_and_writes_an_adapter(ds, tmp_path):
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

    # interrupted after 2 steps, then the same command with a larger budget continues at step 3
    b = tmp_path / "b"
    run_cli(b, teacher, "--max-steps", "2")
    assert json.loads((b / "distill" / "checkpoint" / "state.json").read_text())["step"] == 2
    log_b = run_cli(b, teacher, "--max-steps", "3")
    resume = [r for r in log_b if r.get("event") == "resume"]
    assert resume and resume[0]["step"] == 2
    assert [r["step"] for r in log_b if "loss" in r] == [1, 2, 3]
    # same data order, lr and optimizer state: the resumed run equals the uninterrupted one
    ta, tb = adapter_tensors(adapter), adapter_tensors(b / "distill" / "adapter")
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-6)
    assert [r["loss"] for r in log_b if "loss" in r] == pytest.approx([r["loss"] for r in steps], rel=1e-4)


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
    from slim_train.distill import make_accelerator

    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("no").mixed_precision == "no"
    assert make_accelerator("no").mixed_precision == "no"  # same precision: accelerate's state is reused


def test_auto_precision_is_bf16_only_where_the_cpu_has_native_bf16():
    """torch says "AVX512" for CPUs with and without AVX512-BF16; bf16 autocast is 15x slower than fp32
    where it is emulated, so `auto` reads the CPU flags."""
    import torch

    from slim_train.distill import cpu_flags, resolve_precision

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU's precision")
    info = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    assert cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f", "avx512_vnni"}
    assert resolve_precision("auto", cpu_flags(info)) == "no"  # AVX512 without BF16
    assert resolve_precision("auto", cpu_flags(info.replace("avx512_vnni", "avx512_vnni avx512_bf16"))) == "bf16"
    assert resolve_precision("auto", {"amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_precision("no", {"avx512_bf16"}) == "no"  # an explicit choice is kept
