"""The distilled student: SFT examples, HF conversion of the GGUF base, LoRA GGUF conversion,
merged GGUF export and the model card."""
