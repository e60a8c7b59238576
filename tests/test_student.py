"""The student's two inference paths agree: transformers (+peft) on the converted folder, and
llama.cpp on the GGUF (+ the adapter converted by slim.student.gguf_lora). Real models, greedy decoding.

"Agree" = identical greedy text, or texts identical up to a step where the reference's two best
logits are within TIE (then either token is a correct greedy choice: llama.cpp quantises
activations to 8 bits inside its Q4_1 matmuls, measured |logit difference| mean 0.2, max 1.9 on the
trained adapter, so exact ties can flip; seen once: "(1944)" vs "(1954)" at margin 0.0).

The adapter is trained here for a few steps at a high learning rate on rationales written by the
test, so it visibly changes the output (an untrained LoRA is the identity and would prove nothing).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("peft")

from slim.lm.prompts import student_messages  # noqa: E402
from slim.lm.hf_reasoner import TransformersReasoner# noqa: E402
from slim.lm.llama_reasoner import LlamaCppReasoner# noqa: E402
from slim.lm.reasoners import GenerationParams# noqa: E402
from slim.student.hf_model import PROVENANCE_FILE, _expected_provenance, _matches, student_hf_path  # noqa: E402
from slim.lm.weights import student_gguf_path  # noqa: E402

PARAMS = GenerationParams(max_tokens=40)
TIE = 0.25
RATIONALE = ("Step 1: The user loves classic suspense films.\nStep 2: Thriller, Film-Noir.\n"
             "Step 3: Vertigo (1958); Rear Window (1954)")


@pytest.fixture(scope="module")
def base():
    return student_hf_path()


@pytest.fixture(scope="module")
def prompts(ml100k):
    return [student_messages(ml100k.titles(ml100k.history(u, "valid")), max_history=5) for u in (10, 20)]


def test_converted_folder_is_cached_with_provenance(base, tmp_path):
    record = json.loads((base / PROVENANCE_FILE).read_text())
    assert record["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and record["dtype"] == "float32"
    before = (base / "model.safetensors").stat().st_mtime
    assert student_hf_path() == base and (base / "model.safetensors").stat().st_mtime == before  # reused
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(base / PROVENANCE_FILE, stale / PROVENANCE_FILE)
    expected = _expected_provenance(student_gguf_path())
    assert _matches(stale, expected)
    assert not _matches(stale, {**expected, "source_sha256": "0" * 64})  # another GGUF -> rebuilt


def greedy_with_margins(reasoner: TransformersReasoner, messages) -> tuple[list[int], list[float]]:
    """Reference greedy tokens and, per step, the gap between the two best logits."""
    enc = reasoner._encode([messages])
    with torch.inference_mode():
        out = reasoner.model.generate(**enc, max_new_tokens=PARAMS.max_tokens, do_sample=False, output_scores=True,
                                      return_dict_in_generate=True, pad_token_id=reasoner.tokenizer.pad_token_id)
    tokens = out.sequences[0, enc["input_ids"].shape[1]:].tolist()
    margins = [float(t.topk(2).values[0, 0] - t.topk(2).values[0, 1]) for t in out.scores]
    return tokens, margins


def assert_same_greedy(ref: TransformersReasoner, fast: LlamaCppReasoner, prompts) -> None:
    fast_texts = [g.text for g in fast.generate(prompts, PARAMS)]
    ref_texts = [g.text for g in ref.generate(prompts, PARAMS)]
    tok = ref.tokenizer
    for messages, ref_text, fast_text in zip(prompts, ref_texts, fast_texts):
        assert ref_text.strip()
        if fast_text == ref_text:
            continue
        tokens, margins = greedy_with_margins(ref, messages)
        assert tok.decode(tokens, skip_special_tokens=True) == ref_text
        k = next(i for i in range(len(tokens)) if not fast_text.startswith(tok.decode(tokens[: i + 1])))
        assert margins[k] < TIE, f"paths differ at token {k} where the reference is sure ({margins[k]:.3f}):\n" \
                                 f"{ref_text!r}\n{fast_text!r}"
        assert k >= 10, f"paths differ already at token {k}"


def test_converted_folder_matches_llama_cpp_on_the_gguf(base, prompts):
    assert_same_greedy(TransformersReasoner(base, batch_size=1), LlamaCppReasoner(student_gguf_path(), n_threads=1),
                       prompts)


@pytest.fixture(scope="module")
def tiny_adapter(ml100k, base, tmp_path_factory):
    from slim_train.distill.config import DistillConfig
    from slim_train.distill.loop import train

    rows = [{"user_id": str(ml100k.user_ids[u]), "user_idx": u, "split": "valid", "status": "ok",
             "history_len": int(len(ml100k.history(u, "valid"))), "rationale": RATIONALE, "model": "test"}
            for u in range(30, 36)]
    cfg = DistillConfig(base=str(base), base_model="HuggingFaceTB/SmolLM2-135M-Instruct", lr=3e-3, warmup_steps=1,
                        epochs=2, max_steps=4, batch_size=2, max_len=200, max_history=5, val_fraction=0.0,
                        lora_dropout=0.0, precision="no")
    out = tmp_path_factory.mktemp("tiny")
    train(cfg, rows, ml100k, out / "distill", out / "adapter", meta={"dataset": "ml-100k"}, initial_eval=False,
          gguf=True)
    return out / "adapter"


def test_llama_cpp_with_gguf_lora_reproduces_transformers_with_peft(base, prompts, tiny_adapter):
    assert (tiny_adapter / "adapter.gguf").exists()
    fast = LlamaCppReasoner(student_gguf_path(), lora_path=tiny_adapter / "adapter.gguf", n_threads=1)
    assert_same_greedy(TransformersReasoner(base, adapter_path=tiny_adapter, batch_size=1), fast, prompts)
    tuned = [g.text for g in fast.generate(prompts, PARAMS)]
    plain = [g.text for g in LlamaCppReasoner(student_gguf_path(), n_threads=1).generate(prompts, PARAMS)]
    assert tuned != plain  # the adapter really is applied
    assert all(t.startswith("Step 1:") for t in tuned)  # ...and it learned the rationale format


def test_merged_gguf_reproduces_peft_and_survives_quantisation(base, prompts, tiny_adapter, tmp_path):
    """`slim_train merge`: LoRA merged into the weights. Unquantised (f32) it is the reference model;
    re-quantised to q8_0 it still writes the learned format (its drift is measured in bench/)."""
    from slim.student.gguf_merged import merged_gguf, quantize_gguf

    f32 = merged_gguf(tiny_adapter, base, tmp_path / "merged-f32.gguf", "f32")
    assert_same_greedy(TransformersReasoner(base, adapter_path=tiny_adapter, batch_size=1),
                       LlamaCppReasoner(f32, n_threads=1), prompts)
    q8 = quantize_gguf(f32, tmp_path / "merged-q8_0.gguf", "q8_0")
    assert q8.stat().st_size < f32.stat().st_size / 3
    texts = [g.text for g in LlamaCppReasoner(q8, n_threads=1).generate(prompts, PARAMS)]
    assert all(t.startswith("Step 1:") for t in texts), texts
    with pytest.raises(ValueError, match="unknown quant"):
        quantize_gguf(f32, tmp_path / "x.gguf", "q3_zz")


def test_a_student_distilled_on_the_grounded_prompt_is_prompted_and_decoded_that_way(tmp_path, ml100k):
    """`reason` reads the adapter's metrics.json: a grounded student gets the domain prompt with its
    shortlist and a grammar-bound Step 3 without any flag; a plain one keeps the history-only prompt."""
    import json
    import shutil

    pytest.importorskip("llama_cpp")
    from slim.artifacts.layout import REPO_ROOT, adapter_prompt
    from slim_train.__main__ import main

    grounded = tmp_path / "grounded"
    grounded.mkdir()
    shutil.copy(REPO_ROOT / "assets" / "student" / "adapter.gguf", grounded / "adapter.gguf")
    (grounded / "metrics.json").write_text(json.dumps({"config": {"prompt": "grounded"}}))
    assert adapter_prompt(grounded / "adapter.gguf") == "grounded"
    assert adapter_prompt(REPO_ROOT / "assets" / "student" / "adapter.gguf") == "plain"
    base = ["reason", "--dataset", "ml-100k", "--user-ids", "196", "--splits", "valid", "--max-tokens", "60",
            "--workers", "1", "--out", str(tmp_path)]
    main([*base, "--adapter", str(grounded / "adapter.gguf"), "--name", "g"])
    main([*base, "--adapter", str(REPO_ROOT / "assets" / "student" / "adapter.gguf"), "--name", "p"])
    g = json.loads((tmp_path / "rationales" / "g.jsonl").read_text().splitlines()[0])
    p = json.loads((tmp_path / "rationales" / "p.jsonl").read_text().splitlines()[0])
    assert g["step3_path"] == "grammar" and len(g["step3_items"]) == 3 and "step3_path" not in p
    u = [str(x) for x in ml100k.user_ids].index("196")
    assert not set(g["step3_items"]) & set(ml100k.history(u, "valid").tolist())
    assert g["prompt_hash"] != p["prompt_hash"]
