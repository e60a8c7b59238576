"""Where a run's artefacts live, which ones the repository ships, and the provenance records
that decide when one is reused."""
