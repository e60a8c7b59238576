"""Verbs that PRODUCE artefacts: ``python -m slim_train <verb>`` (teach, distill, reason, publish, models)."""
