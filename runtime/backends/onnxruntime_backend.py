"""The onnxruntime backend: our ONNX export (`casseat-edge export --format onnx`, the layout
transformers.js loads) with its KV cache, on the CPU execution provider (or CUDA's, with
`device="cuda"` and onnxruntime-gpu).

The model spec is the export directory (its `casseat.json` says which variants it holds; `quant`
picks one, default the first exported). Prompts go through the one preprocessing path with the
exported processor files. Text-only models run the merged `model` graph on token ids; for VLMs the
images become the processor's pixel tensors, run through `vision_encoder` and scattered into the
image-token positions of `embed_tokens`' output before `decoder_model_merged`, as
`casseat_edge.formats.onnx_split.SplitOnnxModel` does for the exporter's verification. The past
key/values are numpy arrays: stage 2 continues from stage 1's, truncation slices them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import ModelSpecError
from casseat_edge.formats.onnx_split import SplitOnnxModel
from casseat_edge.models import ModelRef, resolve_model
from casseat_edge.preprocess import encode, processor_tokenizer
from casseat_edge.registry import BACKENDS
from runtime.backends.base import Encoded, Engine, HfTokenizerHooks

IMAGE_ID_KEYS = ("image_token_id", "vision_start_token_id", "vision_end_token_id")


@BACKENDS.register("onnxruntime", "ort")
class OrtEngine(HfTokenizerHooks, Engine):
    """onnxruntime on an ONNX export: stage 2 continues from stage 1's past key/values."""

    name = "onnxruntime"
    extra_name = "(core install; gpu for the CUDA provider)"

    def __init__(
        self,
        model: str | Path | ModelRef,
        quant: str | None = None,  # one export directory holds several quantized variants
        threads: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__(temperature, seed)
        ref = model if isinstance(model, ModelRef) else resolve_model(model)
        if ref.kind != "export" or ref.arch is None:
            raise ModelSpecError(
                f"{ref.spec}: the onnxruntime backend needs an ONNX export directory; export one "
                f"with: casseat-edge export --format onnx --model {ref.spec} --out DIR"
            )
        self.runner = SplitOnnxModel(ref.path, quant, threads or 0, device)
        self.spec, self.ref, self.arch = ref.spec, ref, ref.arch
        self.quant = self.runner.quant
        self.processor = ref.arch.load_processor(ref.path)
        self.tokenizer = processor_tokenizer(self.processor)
        config, generation = _configs(ref.path)
        text_config = getattr(config, "text_config", None) or config
        self.n_ctx = int(getattr(text_config, "max_position_embeddings", 2048))
        self._stops = _stop_ids(generation, self.tokenizer)
        self._image_ids = {getattr(config, k) for k in IMAGE_ID_KEYS if getattr(config, k, None)}
        self.past: list[np.ndarray] | None = None
        self.ids: list[int] = []

    def encode(self, messages: list[dict[str, Any]], image: Any, caption: str | None) -> Encoded:
        inputs = encode(self.processor, self.arch, messages, image=image, caption=caption)
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        positions = [i for i, t in enumerate(ids) if t in self._image_ids]
        extra = {k: v.numpy() for k, v in inputs.items()} or None
        return Encoded(ids, extra, positions[-1] + 1 if positions else 0)

    def truncate(self, n_tokens: int) -> None:
        if n_tokens == 0:
            self.past, self.ids = None, []
        elif self.past is not None and self.past[0].shape[2] > n_tokens:
            self.past = [np.ascontiguousarray(p[:, :, :n_tokens]) for p in self.past]
            self.ids = self.ids[:n_tokens]

    def prefill(self, ids: list[int], start: int, extra: dict[str, Any] | None) -> np.ndarray:
        return self._forward(list(ids), start, extra)

    def step(self, token: int, position: int) -> np.ndarray:
        return self._forward([*self.ids[:position], token], position, None)

    def verify(self, tokens: list[int], position: int) -> np.ndarray:
        return self._forward([*self.ids[:position], *tokens], position, None, every=True)

    def _forward(
        self, ids: list[int], start: int, extra: dict[str, Any] | None, every: bool = False
    ) -> np.ndarray:
        """The last position's logits, or with `every` those of each evaluated one."""
        cached = 0 if self.past is None else self.past[0].shape[2]
        if cached != start:
            raise RuntimeError(f"KV cache holds {cached} positions, asked to continue at {start}")
        logits, self.past = self.runner.forward(ids, start, self.past, extra)
        self.ids = ids
        return logits if every else logits[-1]

    def take_encode_ms(self) -> float | None:
        if not self.vision:
            return None
        ms, self.runner.encode_s = self.runner.encode_s * 1e3, 0.0
        return ms

    def model_bytes(self) -> int:
        return self.runner.nbytes()


def _configs(path: Path) -> tuple[Any, Any]:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path)
    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:
        generation = None
    return config, generation


def _stop_ids(generation: Any, tokenizer: Any) -> set[int]:
    eos = getattr(generation, "eos_token_id", None)
    stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    return stops
