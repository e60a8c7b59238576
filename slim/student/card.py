"""The student adapter's model card: one builder for ``distill`` (local README) and ``publish`` (Hub).

Metadata goes through ``huggingface_hub.ModelCardData`` so the YAML header is what the Hub
validates (base_model, library_name, datasets, license, tags, pipeline_tag); the body is ours.
Everything in it comes from ``metrics.json`` written next to the adapter, so the card never states
a number that the run did not measure.
"""
from __future__ import annotations

from typing import Any

from slim.lm.prompts import STUDENT_INSTRUCTION, TEACHER_INSTRUCTION, TEACHER_SYSTEM, format_history

LICENSE = "apache-2.0"  # SmolLM2 and the Qwen2.5-Coder teacher are Apache-2.0


def _fmt(x: Any, nd: int = 4) -> str:
    return f"{x:.{nd}f}" if isinstance(x, float) else ("n/a" if x is None else str(x))


def curve_summary(log: list[dict], points: int = 8) -> list[dict]:
    """A few evenly spaced (step, loss, val_loss) points of the training log, for the card."""
    train = [r for r in log if "loss" in r]
    vals = [r for r in log if r.get("val_loss") is not None]
    if not train and not vals:
        return []
    picks = train[:: max(1, len(train) // points)] if train else []
    if train and picks[-1] is not train[-1]:
        picks.append(train[-1])
    by_step = {r["step"]: {"step": r["step"], "loss": r.get("loss")} for r in picks}
    for r in vals:
        by_step.setdefault(r["step"], {"step": r["step"], "loss": None})["val_loss"] = r["val_loss"]
    return [by_step[s] for s in sorted(by_step)]


def build_card(metrics: dict, repo_id: str | None = None, dataset_repo: str | None = None,
               rationales_in_repo: bool = False):
    """A ``huggingface_hub.ModelCard`` for the adapter described by ``metrics`` (distill's metrics.json)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = metrics.get("base_model", "HuggingFaceTB/SmolLM2-135M-Instruct")
    data = ModelCardData(
        base_model=base,
        library_name="peft",
        license=LICENSE,
        language="en",
        pipeline_tag="text-generation",
        datasets=[dataset_repo] if dataset_repo else None,
        tags=["lora", "peft", "sequential-recommendation", "knowledge-distillation", "chain-of-thought", "slim"],
        model_name=repo_id.split("/")[-1] if repo_id else "slim-student",
    )
    cfg = metrics.get("config", {})
    data_info = metrics.get("data", {})
    curve = metrics.get("curve") or []
    rows = "\n".join(f"| {p['step']} | {_fmt(p.get('loss'))} | {_fmt(p.get('val_loss'))} |" for p in curve)
    example_history = format_history(["Toy Story (1995)", "Star Wars (1977)", "Fargo (1996)"])
    where_data = (f"[`{dataset_repo}`](https://huggingface.co/datasets/{dataset_repo})" if dataset_repo else
                  "the `rationales/` folder of this repository" if rationales_in_repo else "not published")
    body = f"""
# {data.model_name}: a small reasoner for sequential recommendation (SLIM)

A LoRA adapter for [`{base}`](https://huggingface.co/{base}) distilled from a larger teacher's
step-by-step recommendation rationales, following *Can Small Language Models be Good Reasoners for
Sequential Recommendation?* (SLIM, Wang et al., WWW 2024). Given a user's interaction history it
writes a 3-step rationale (Step 1 preferences, Step 2 categories, Step 3 items); the rationale is
then encoded as text and fused into a sequential recommender (SASRec, GRU4Rec, SRGNN).

## Training

- Teacher: `{metrics.get('teacher_model', 'n/a')}`, rationales for the training prefix of each user
  (the last two interactions are never shown), only rows that parse into 3 steps.
- Dataset: `{metrics.get('dataset', 'n/a')}`; {data_info.get('train_examples', 'n/a')} training and
  {data_info.get('val_examples', 'n/a')} held-out validation users (split by a hash of the user id),
  {data_info.get('target_tokens', 'n/a')} rationale tokens in total.
- Rationale data: {where_data}.
- LoRA: r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')}, dropout={cfg.get('lora_dropout')},
  target modules {', '.join(cfg.get('target_modules', []))}.
- Optimiser: AdamW, lr {cfg.get('lr')}, batch {cfg.get('batch_size')} x {cfg.get('grad_accum')} accumulation,
  max length {cfg.get('max_len')} tokens, {metrics.get('steps', 'n/a')} steps
  ({_fmt(metrics.get('epochs_done'), 2)} epochs), precision {cfg.get('precision')}.
- Loss on rationale tokens only (the prompt is masked).

## Metrics

| metric | value |
|---|---|
| validation loss before training | {_fmt(metrics.get('val_loss_initial'))} |
| validation loss after training | {_fmt(metrics.get('val_loss_final'))} |
| best validation loss | {_fmt(metrics.get('val_loss_best'))} (step {metrics.get('val_loss_best_step', 'n/a')}) |
| last training loss | {_fmt(metrics.get('train_loss_last'))} |
| training time | {_fmt(metrics.get('train_seconds'), 0)} s ({_fmt(metrics.get('seconds_per_step'), 2)} s/step on {metrics.get('hardware', 'n/a')}) |

Training curve (token-mean cross-entropy):

| step | train loss | validation loss |
|---|---|---|
{rows}

## Prompt

The student gets the simplified prompt (one user turn, chat template of the base model):

```
{example_history}
{STUDENT_INSTRUCTION}
```

The teacher was prompted with the system message "{TEACHER_SYSTEM}" and:

```
<history>...</history>

{TEACHER_INSTRUCTION}
```

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

tok = AutoTokenizer.from_pretrained("{base}")
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{repo_id or '<this repo>'}")
```

For llama.cpp, convert the adapter with `convert_lora_to_gguf.py` and pass it as `lora_path`
(SLIM-Rec does this in `slim.student.gguf_lora`). Decode greedily for reproducible rationales.

## Intended use

Research on LLM-augmented sequential recommendation: generating user-side rationales that a
recommender encodes as features. Not a general chat model.

## Limitations

- 135M parameters: rationales are short, often generic, and Step 3 may name items that do not
  exist in the catalogue; they are features for a recommender, not advice to show users unchecked.
- It imitates one small teacher on one domain ({metrics.get('dataset', 'n/a')}); expect weaker output
  on other domains and inherited teacher biases (popular items, genre stereotypes).
- Item titles in prompts are data; the prompt tells the model to ignore instructions inside
  `<history>`, but a small model is not a security boundary.
- The rationale data mentions item titles of the source dataset; check the source dataset's terms
  (MovieLens, Amazon reviews) before redistributing it.
"""
    # plain concatenation, not a Jinja template: titles or metrics must never be interpreted as markup
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
