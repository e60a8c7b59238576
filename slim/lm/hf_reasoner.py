"""transformers + peft (:class:`TransformersReasoner`): the reference path the llama.cpp fast path is
checked against, and the one that runs on GPUs."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from slim.lm.prompts import Messages
from slim.lm.reasoners import Generation, GenerationParams

# ---------------------------------------------------------------------------------------
# transformers (+ peft)
# ---------------------------------------------------------------------------------------
class TransformersReasoner:
    """Base model (HF folder or Hub id) + optional peft LoRA adapter, batched greedy decoding."""

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, device: str | None = None,
                 dtype: str = "float32", model_name: str | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype))
        if adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.model_name = model_name or (Path(str(model_path)).name + (f"+{Path(adapter_path).name}" if adapter_path else ""))

    def _encode(self, batch: Sequence[Messages], prefix: str = ""):
        texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) + prefix
                 for m in batch]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def continue_answer(self, messages: Messages, prefix: str, params: GenerationParams | None = None) -> Generation:
        """Greedy continuation of an assistant answer forced to begin with ``prefix`` (the continuation only)."""
        return self.generate([messages], params, prefix=prefix)[0]

    def generate(self, batch: Sequence[Messages], params: GenerationParams | None = None,
                 prefix: str = "") -> list[Generation]:
        import torch

        params = params or GenerationParams()
        out: list[Generation] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            enc = self._encode(chunk, prefix)
            t0 = time.perf_counter()
            with torch.inference_mode():
                ids = self.model.generate(**enc, max_new_tokens=params.max_tokens, do_sample=params.temperature > 0,
                                          temperature=params.temperature or None, top_p=None, top_k=None,
                                          # the same CTRL penalty, but over the whole context where
                                          # llama.cpp uses the last 64 tokens: texts can differ when set
                                          repetition_penalty=params.repeat_penalty,
                                          pad_token_id=self.tokenizer.pad_token_id)
            seconds = (time.perf_counter() - t0) / len(chunk)
            new = ids[:, enc["input_ids"].shape[1]:]
            for row, prompt_len in zip(new, enc["attention_mask"].sum(1).tolist()):
                keep = row[row != self.tokenizer.pad_token_id]
                finished = bool((row == self.tokenizer.eos_token_id).any())
                out.append(Generation(self.tokenizer.decode(keep, skip_special_tokens=True), int(len(keep)),
                                      int(prompt_len), seconds, self.model_name, "stop" if finished else "length"))
        return out

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        params = params or GenerationParams()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = self._encode([messages])
        thread = threading.Thread(target=self.model.generate, kwargs=dict(
            **enc, max_new_tokens=params.max_tokens, do_sample=False, streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id))
        thread.start()
        yield from streamer
        thread.join()
