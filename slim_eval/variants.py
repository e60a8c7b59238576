"""The variants slim_eval can measure, what each needs, and the command that produces what is missing.

A *variant name* on the command line (``--variants``) maps to a model variant of
``slim.recommenders`` plus the text it consumes:

==============  ============  =====================  ==========================================
name            model         user text              paper
==============  ============  =====================  ==========================================
id              id            -                      X (GRU4Rec / SASRec / SRGNN)
text            text          -                      X+ (item-text extension)
teacher         teacher       teacher rationales     SLIM- (X + teacher rationale)
slim            slim          student rationales     SLIM (X)
match           match         student, all 3 steps   Table 2 "SLIM" (text matching, no backbone)
match-stepK     match         student, step K only   Table 2 "SLIM-StepK"
match-teacher   match         teacher, all 3 steps   Table 2 teacher row
match-step3-    match         student, step 3 after  (ours) Step 3 post-filtered: only catalogue
clean                         slim.lm.step3_filter      items not already in the history
match-clean     match         student, 3 steps, step (ours) all steps, Step 3 post-filtered
                              3 post-filtered
slim-clean      slim          student, 3 steps, step (ours) SLIM (X) with Step 3 post-filtered
                              3 post-filtered
slim-gated      slim (gated)  student rationales     (ours) s_u = h_t + g * g_l'(r), g = 0 at init
teacher-gated   teacher       teacher rationales     (ours) the same gate with the teacher's rationales
                (gated)
slim-noleak     slim          student rationales     (ours) SLIM trained with a zero rationale at the
                                                     positions whose target its prompt showed
teacher-noleak  teacher       teacher rationales     (ours) the same for SLIM-
==============  ============  =====================  ==========================================

``match*`` variants have no backbone: they are fitted once (backbone "none"), whatever
``--backbones`` says.
"""
from __future__ import annotations

from dataclasses import dataclass

from slim.artifacts.layout import RATIONALE_FILES, student_adapter

VARIANT_NAMES = ("id", "text", "teacher", "slim", "match", "match-step1", "match-step2", "match-step3",
                 "match-teacher", "match-step3-clean", "match-clean", "slim-clean", "slim-gated", "teacher-gated",
                 "slim-noleak", "teacher-noleak")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    model_variant: str  # slim.recommenders variant
    rationales: str | None = None  # "teacher" | "student" | None
    step: int | None = None  # 1..3: only that step of the rationale; None: all steps
    tag: str = ""  # FitConfig.tag: keeps checkpoint names of same-model variants apart
    clean_step3: bool = False  # Step 3 post-filtered (slim.lm.step3_filter) before encoding
    fusion: str = "concat"  # FitConfig.fusion: "gated" starts from X+ and lets the rationale in by a gate
    rationale_window: int = 0  # FitConfig.rationale_window: leakage-free training positions

    @property
    def has_backbone(self) -> bool:
        return self.model_variant != "match"

    @property
    def needs_item_text(self) -> bool:
        return self.model_variant != "id"


def spec(name: str) -> VariantSpec:
    """``--variants`` entry -> what to fit; raises ValueError naming the valid choices."""
    if name == "id":
        return VariantSpec("id", "id")
    if name == "text":
        return VariantSpec("text", "text")
    if name == "teacher":
        return VariantSpec("teacher", "teacher", rationales="teacher")
    if name == "slim":
        return VariantSpec("slim", "slim", rationales="student")
    if name in ("slim-gated", "teacher-gated"):
        who = name.split("-")[0]
        return VariantSpec(name, who, rationales="student" if who == "slim" else "teacher", tag="gated", fusion="gated")
    if name in ("slim-noleak", "teacher-noleak"):
        from slim.lm.prompts import DEFAULT_MAX_HISTORY

        who = name.split("-")[0]
        return VariantSpec(name, who, rationales="student" if who == "slim" else "teacher", tag="noleak",
                           rationale_window=DEFAULT_MAX_HISTORY)
    if name == "slim-clean":
        return VariantSpec(name, "slim", rationales="student", tag="clean", clean_step3=True)
    if name == "match":
        return VariantSpec("match", "match", rationales="student")
    if name == "match-teacher":
        return VariantSpec("match-teacher", "match", rationales="teacher", tag="teacher")
    if name == "match-clean":
        return VariantSpec(name, "match", rationales="student", tag="clean", clean_step3=True)
    if name == "match-step3-clean":
        return VariantSpec(name, "match", rationales="student", step=3, tag="step3clean", clean_step3=True)
    if name.startswith("match-step") and name[-1] in "123" and len(name) == len("match-step1"):
        k = int(name[-1])
        return VariantSpec(name, "match", rationales="student", step=k, tag=f"step{k}")
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANT_NAMES)}")



def producer_command(rationales: str, dataset: str, out: str | None = None, users: int | None = None,
                     user_seed: int = 0, student_file: str = RATIONALE_FILES["student"]) -> str:
    """The slim_train command that writes ``rationales/<teacher|student>.jsonl`` for the evaluated users.

    Both splits are needed: the valid rationale (written from seq[:-2]) trains and selects the
    model, the test one (from seq[:-1]) scores the test target. ``users``: the same seeded sample
    as ``slim_eval --users N --user-seed S``, so no rationale is written for a user never evaluated.
    """
    flags = " --splits valid,test"
    if users:
        # teach's own --first-users is a prefix of its permutation (grown for distillation): --eval-users
        # asks it for slim_eval's seeded sample instead; reason's --users already is that sample
        flags += f" --{'eval-users' if rationales == 'teacher' else 'users'} {users} --seed {user_seed}"
    if out:
        flags += f" --out {out}"
    if rationales == "teacher":
        return f"python -m slim_train teach --dataset {dataset}{flags} --max-tokens 256"
    if student_file != RATIONALE_FILES["student"]:  # reason writes rationales/<name>.jsonl
        flags += f" --name {student_file.removesuffix('.jsonl')}"
    return (f"python -m slim_train reason --dataset {dataset}{flags} --workers 2 --max-tokens 160 "
            f"--adapter {student_adapter(dataset)}")


def run_name(backbone: str, variant: str, seed: int) -> str:
    """Same name ``FitConfig.name`` gives the checkpoint (minus its key hash) and the eval files."""
    s = spec(variant)
    bb = backbone if s.has_backbone else "none"
    tag = f"-{s.tag}" if s.tag else ""
    return f"{bb}-{s.model_variant}{tag}-seed{seed}"
