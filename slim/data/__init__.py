"""Datasets in one schema, the leave-one-out split and user indices."""
