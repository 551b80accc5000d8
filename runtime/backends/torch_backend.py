"""The torch backend: transformers models from `casseat_edge.models.load_model` (fp32/bf16).

Stage 2 continues from stage 1's `DynamicCache`: the cache is cropped to the common prefix of the
conversation's ids and only the new tokens are prefilled, with explicit `cache_position`s (which
Qwen2-VL also needs for its multimodal rotary positions). Only the last position's logits are
computed (`logits_to_keep=1`; a speculative draft's check, those of the draft). The vision tower's time is measured with forward hooks, so
`encode_ms` is reported separately from prefill.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import BackendUnavailableError
from casseat_edge.models import ModelRef, load_model, resolve_model
from casseat_edge.preprocess import encode
from casseat_edge.registry import BACKENDS
from runtime.backends.base import Encoded, Engine, HfTokenizerHooks

VISION_MODULES = ("vision_model", "visual", "vision_tower")  # Idefics3, Qwen2-VL, LLaVA


@BACKENDS.register("torch", "transformers")
class TorchEngine(HfTokenizerHooks, Engine):
    """transformers on CPU (or CUDA): KV reuse across stages through DynamicCache."""

    name = "torch"
    extra_name = "(core install)"

    def __init__(
        self,
        model: str | Path | ModelRef,
        dtype: str = "float32",
        threads: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__(temperature, seed)
        try:
            import torch
        except ImportError:
            raise BackendUnavailableError(
                "the torch backend needs torch; install it: pip install 'torch>=2.4,<2.14'"
            ) from None
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        ref = model if isinstance(model, ModelRef) else resolve_model(model)
        loaded = load_model(ref, dtype=dtype)
        self.spec, self.ref = ref.spec, ref
        self.model = loaded.model.to(device)
        self.device = device
        self.processor, self.arch, self.tokenizer = loaded.processor, loaded.arch, loaded.tokenizer
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        self.n_ctx = int(getattr(text_config, "max_position_embeddings", 2048))
        self._stops = _stop_ids(self.model, self.tokenizer)
        self._image_ids = _image_token_ids(config)
        self.cache: Any = None
        # only the last positions' logits are needed; not every family's forward takes the knob
        accepted = inspect.signature(self.model.forward).parameters
        self._keep = "logits_to_keep" in accepted
        self._encode_s = 0.0
        self._hook_vision()

    def _hook_vision(self) -> None:
        for owner in (getattr(self.model, "model", None), self.model):
            for name in VISION_MODULES:
                module = getattr(owner, name, None) if owner is not None else None
                if module is not None:
                    module.register_forward_pre_hook(self._vision_start)
                    module.register_forward_hook(self._vision_end)
                    return

    def _vision_start(self, *_: Any) -> None:
        self._vision_t0 = time.perf_counter()

    def _vision_end(self, *_: Any) -> None:
        self._encode_s += time.perf_counter() - self._vision_t0

    def take_encode_ms(self) -> float | None:
        if not self.vision:
            return None
        ms, self._encode_s = self._encode_s * 1e3, 0.0
        return ms

    def encode(self, messages: list[dict[str, Any]], image: Any, caption: str | None) -> Encoded:
        inputs = encode(self.processor, self.arch, messages, image=image, caption=caption)
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        positions = [i for i, t in enumerate(ids) if t in self._image_ids]
        extra = {k: v.to(self.device) for k, v in inputs.items()} or None
        return Encoded(ids, extra, positions[-1] + 1 if positions else 0)

    def truncate(self, n_tokens: int) -> None:
        if n_tokens == 0:
            self.cache = None
        elif self.cache is not None and self.cache.get_seq_length() > n_tokens:
            self.cache.crop(n_tokens)

    def prefill(self, ids: list[int], start: int, extra: dict[str, Any] | None) -> np.ndarray:
        return self._forward(ids[start:], start, extra or {})

    def step(self, token: int, position: int) -> np.ndarray:
        return self._forward([token], position, {})

    def verify(self, tokens: list[int], position: int) -> np.ndarray:
        return self._forward(tokens, position, {}, rows=len(tokens))

    def _forward(
        self, ids: list[int], start: int, extra: dict[str, Any], rows: int = 1
    ) -> np.ndarray:
        """Logits of the last position, or of the last `rows` ones ([rows, vocab])."""
        torch = self._torch
        end = start + len(ids)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                attention_mask=torch.ones((1, end), dtype=torch.long, device=self.device),
                past_key_values=self.cache,
                cache_position=torch.arange(start, end, device=self.device),
                use_cache=True,
                **({"logits_to_keep": rows} if self._keep else {}),
                **extra,
            )
        self.cache = out.past_key_values
        logits = out.logits[0, -rows:].float().cpu().numpy()
        return logits if rows > 1 else logits[-1]

    def model_bytes(self) -> int:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    return stops


def _image_token_ids(config: Any) -> set[int]:
    names = ("image_token_id", "image_token_index", "vision_start_token_id", "vision_end_token_id")
    return {getattr(config, n) for n in names if getattr(config, n, None) is not None}
