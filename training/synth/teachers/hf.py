"""The transformers teacher, `hf:SPEC`: any supported HF model directory (or `hf:tiny:smolvlm`,
`hf:embedded:smollm2-135m-instruct`) with batched generation.

Vision models see the image; text-only models read the caption. Inputs come from the shared
preprocessing path (`casseat_edge.preprocess.encode_batch`, left-padded), so a teacher prompt
tokenizes exactly as the student's training samples and the runtime do. Stage 2 re-encodes the
whole conversation (no cache reuse across `generate` calls in this teacher).
"""

from __future__ import annotations

import time
from typing import Any

from casseat_edge.models import load_model
from casseat_edge.preprocess import encode_batch, load_image
from casseat_edge.registry import TEACHERS
from training.synth.teachers.base import ChatTeacher, Generation, SynthItem


class HFTeacher(ChatTeacher):
    """A transformers model (fp32 on CPU, or the model's device), batched greedy/sampled decoding."""

    prefix = "hf"
    spec_help = "hf:MODEL_SPEC (an HF directory, tiny:ARCH or embedded:NAME)"

    def __init__(self, spec: str, argument: str, config: Any) -> None:
        import torch

        super().__init__(spec, argument, config)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.loaded = load_model(argument, trust_remote_code=config.trust_remote_code)
        self.sees_images = self.loaded.arch.vision
        self.batch_size = config.batch_size

    def generate(
        self, conversations: list[list[dict[str, Any]]], items: list[SynthItem]
    ) -> list[Generation]:
        import torch

        images = [
            load_image(i.image_path) if i.image_path and self.sees_images else None for i in items
        ]
        inputs = encode_batch(
            self.loaded.processor,
            self.loaded.arch,
            conversations,
            images,
            [i.caption for i in items],
        )
        start = time.perf_counter()
        with torch.no_grad():
            out = self.loaded.model.generate(**inputs, **self._sampling())
        seconds = time.perf_counter() - start
        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        return [
            self._reply(out[row, prompt_len:], int(prompt_tokens[row]), seconds / len(items))
            for row in range(len(items))
        ]

    def _sampling(self) -> dict[str, Any]:
        tokenizer = self.loaded.tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.config.max_new_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self.config.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.config.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _reply(self, new_tokens: Any, prompt_tokens: int, seconds: float) -> Generation:
        tokenizer = self.loaded.tokenizer
        ids = new_tokens.tolist()
        stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        ids = ids[: next((k for k, t in enumerate(ids) if t in stop), len(ids))]
        return Generation(
            text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
            prompt_tokens=prompt_tokens,
            new_prefill_tokens=prompt_tokens,
            completion_tokens=len(ids),
            seconds=seconds,
        )


TEACHERS.register("hf")(HFTeacher)
