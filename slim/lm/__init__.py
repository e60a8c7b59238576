"""Language-model side: prompts, reasoners, rationale files, catalogue title matching, Step-3
grounding and post-filter, rationale quality, text encoders and model weights."""
