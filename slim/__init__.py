"""SLIM-Rec library. One folder per job (see docs/ARCHITECTURE.md):

data/          datasets, the leave-one-out split, user indices
artifacts/     run-directory layout, shipped artefacts, provenance records and atomic writes
eval/          ranking metrics, sampled negatives, novelty
recommenders/  the backbones, the text variants and the one training loop (fit / load_fitted)
lm/            prompts, reasoners, rationale files, title matching, Step-3 grounding and filtering
student/       the distilled student: SFT examples, HF conversion, GGUF adapters, model card
demo/          the Space's service: uploads, checkpoints, ranking, display

``slim`` never imports the verbs (``slim_eval``, ``slim_train``) or ``app.py``.
"""
