"""The distillation's settings: one dataclass whose fields carry their own help, and the flags made from it.

The flags are generated from the fields (``add_config_args``) so a new setting is one field with its
help text, not a field plus an argparse line that can drift from it. The generator is ours rather
than ``transformers.HfArgumentParser``: that class must be the parser itself (``slim_train`` builds
one sub-parser per verb), it turns list fields into space-separated ``nargs="+"`` and booleans into
``--flag true|false``, while the shipped commands write ``--target-modules q_proj,v_proj`` and
``--gradient-checkpointing``.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, dataclass, field, fields

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _help(text: str, **extra) -> dict:
    """Field metadata: the flag's help text and, optionally, ``choices`` or ``flag`` (another flag name)."""
    return {"help": text, **extra}


@dataclass
class DistillConfig:
    """Everything that determines the run; saved in the checkpoint and the adapter's metrics.json."""

    base: str = field(default="", metadata=_help(
        "student HF folder or Hub id (default: converted SmolLM2-135M-Instruct)"))
    base_model: str = field(default="", metadata=_help("Hub id recorded in the adapter (default: the student's)"))
    lora_r: int = field(default=16, metadata=_help("LoRA rank"))
    lora_alpha: int = field(default=32, metadata=_help("LoRA scaling numerator (scale = alpha / r)"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input"))
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      metadata=_help("comma-separated module names"))
    lr: float = field(default=2e-4, metadata=_help("peak learning rate (linear warmup, linear decay to 10 %%)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_steps: int = field(default=10, metadata=_help("optimizer steps of linear warmup"))
    epochs: int = field(default=3, metadata=_help("epochs the lr schedule spans"))
    max_steps: int | None = field(default=None, metadata=_help(
        "stop after this many optimizer steps in total (over all reruns); the schedule is unchanged"))
    batch_size: int = field(default=4, metadata=_help("per process"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    max_len: int = field(default=512, metadata=_help("tokens per example (old titles are dropped first)"))
    max_history: int = field(default=20, metadata=_help("most recent titles shown in the student prompt"))
    val_fraction: float = field(default=0.1, metadata=_help("stable share of users held out for validation loss"))
    eval_every: int = field(default=0, metadata=_help("steps; 0 = each epoch end"))
    save_every: int = field(default=20, metadata=_help("checkpoint every N steps"))
    precision: str = field(default="auto", metadata=_help(
        "auto: bf16 on GPUs/CPUs with native bf16, else fp32", choices=["auto", "bf16", "fp16", "no"]))
    gradient_checkpointing: bool = field(default=False, metadata=_help("~half the RAM, ~30%% slower"))
    # named ``seed`` in checkpoints and metrics.json; its flag says whose seed it is (not a user sample's)
    seed: int = field(default=0, metadata=_help("LoRA init, dropout and data-order seed", flag="--lora-seed"))
    # Start from an existing adapter instead of a fresh LoRA (peft folder). This is how one student
    # serves a second domain: the ML-100K student continues on a few hundred Games rationales, which
    # costs minutes of teacher time per hundred users instead of a full per-domain distillation.
    init_adapter: str = field(default="", metadata=_help(
        "peft adapter folder to continue from (e.g. assets/student: adapt the ML-100K student to another "
        "domain); its LoRA shape must match --lora-r/--target-modules"))
    # "plain" (history only; the v2/v3 students) or "grounded" (the dataset's domain and the teacher's
    # candidate shortlist, so the student learns to choose Step 3 among the candidates
    # `reason --step3 grammar --domain dataset` shows it; rows without a grounded Step 3 are skipped).
    prompt: str = field(default="plain", metadata=_help(
        "student prompt: plain (history only) or grounded (domain + the teacher's candidate shortlist; for "
        "rows written by `teach --step3 grammar`)", choices=["plain", "grounded"]))

    def trainable_key(self) -> dict:
        """Fields that must not change when resuming (they change what the checkpoint means).

        ``prompt`` joins the key only when not "plain", so checkpoints written before it existed resume."""
        keep = ("base", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "max_len", "max_history",
                "val_fraction", "seed", "batch_size", "grad_accum", "init_adapter")
        key = {k: getattr(self, k) for k in keep}
        if self.prompt != "plain":
            key["prompt"] = self.prompt
        return key


def comma_list(text: str) -> list[str]:
    """``"q_proj, v_proj"`` -> ``["q_proj", "v_proj"]`` (the spelling of list flags on the command line)."""
    return [m.strip() for m in text.split(",") if m.strip()]


def _flag_kwargs(kind: object, default: object) -> dict:
    """argparse keywords for one field's type: bool -> a switch, list[str] -> comma-separated, X | None -> X."""
    if kind is bool:
        return {"action": "store_true"}
    if typing.get_origin(kind) is list:
        return {"type": comma_list, "default": default}
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return {"type": args[0] if args else kind, "default": default}


def add_config_args(p: argparse.ArgumentParser, cls: type = DistillConfig) -> None:
    """One ``--field-name`` flag per field of ``cls`` (or the name its metadata's ``flag`` gives)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kwargs = _flag_kwargs(hints[f.name], default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        p.add_argument(flag, dest=f.name, help=f.metadata.get("help"), **kwargs)


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """The dataclass from parsed flags (each flag's ``dest`` is its field's name)."""
    names = {f.name for f in fields(DistillConfig)}
    return DistillConfig(**{k: v for k, v in vars(args).items() if k in names})
