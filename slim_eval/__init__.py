"""Verbs that MEASURE artefacts: ``python -m slim_eval`` (tables, per-user results, plots)."""
