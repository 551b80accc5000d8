"""The llama.cpp backend for text GGUFs (the embedded SmolLM2, or any `.gguf` path).

Driven token by token on llama-cpp-python's `Llama` (`eval` + logits), not through its chat
handlers, which clear the cache on every call: stage 2 continues from the KV state stage 1 left,
so only the stage-2 turn's own tokens are evaluated. The prompt is rendered through the one
preprocessing path with the GGUF's own chat template; text-only models read the image's caption.
GGUFs with an mmproj (images through libmtmd) are refused until that driver exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import BackendUnavailableError, ModelSpecError
from casseat_edge.models import ModelRef, resolve_model
from casseat_edge.models.tokenizer import GgufChatTemplate
from casseat_edge.registry import BACKENDS
from runtime.backends.base import Encoded, Engine

EXTRA = "llama"


class TextOnly:
    """The arch stand-in for a bare GGUF: no vision, so prompts read captions."""

    vision = False
    architecture = "gguf"


@BACKENDS.register("llama.cpp", "llamacpp", "gguf")
class LlamaCppEngine(Engine):
    """llama.cpp (llama-cpp-python) on text GGUFs: stage 2 continues from stage 1's KV state."""

    name = "llama.cpp"
    extra_name = EXTRA

    def __init__(
        self,
        model: str | Path | ModelRef,
        n_ctx: int = 4096,
        threads: int | None = None,
        n_batch: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(temperature, seed)
        llama_cpp = _import_llama_cpp()
        ref = model if isinstance(model, ModelRef) else _resolve(str(model))
        if ref.gguf is None:
            raise ModelSpecError(
                f"{ref.spec}: the llama.cpp backend needs a .gguf file (or "
                "embedded:smollm2-135m-instruct); export one with: casseat-edge export --format gguf"
            )
        if ref.mmproj is not None:
            raise BackendUnavailableError(
                f"{ref.gguf}: image GGUFs (mmproj {ref.mmproj.name}) need the libmtmd driver, "
                "which is not built yet; use --backend torch, or move the mmproj away to use captions"
            )
        self.spec, self.ref, self.path = ref.spec, ref, ref.gguf
        self.arch = ref.arch or TextOnly
        if self.arch.vision:
            raise ModelSpecError(f"{ref.spec}: a vision model needs its mmproj GGUF next to it")
        self.llm = llama_cpp.Llama(
            str(self.path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=threads or os.cpu_count(),
            seed=seed,
            verbose=False,
        )
        self._llama_cpp = llama_cpp
        self.n_ctx = self.llm.n_ctx()
        self._n_vocab = self.llm.n_vocab()
        self._vocab = self.llm._model.vocab
        self.processor = GgufChatTemplate(
            self.path, self._piece(self.llm.token_bos()), self._piece(self.llm.token_eos())
        )

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def encode(self, messages: list[dict[str, Any]], image: Any, caption: str | None) -> Encoded:
        from casseat_edge.preprocess import render_prompt

        return Encoded(self.tokenize(render_prompt(self.processor, self.arch, messages, caption)))

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def is_stop(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def truncate(self, n_tokens: int) -> None:
        # Llama.eval removes every cached position from n_tokens on before evaluating
        self.llm.n_tokens = min(n_tokens, self.llm.n_tokens)
        self.llm._ctx.kv_cache_seq_rm(-1, self.llm.n_tokens, -1)

    def prefill(self, ids: list[int], start: int, extra: dict[str, Any] | None) -> np.ndarray:
        assert self.llm.n_tokens == start, (self.llm.n_tokens, start)
        self.llm.eval(ids[start:])
        return self._logits()

    def step(self, token: int, position: int) -> np.ndarray:
        self.llm.eval([token])
        return self._logits()

    def _logits(self) -> np.ndarray:
        pointer = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def close(self) -> None:
        self.llm.close()

    def model_bytes(self) -> int:
        return self.path.stat().st_size


def _resolve(spec: str) -> ModelRef:
    """Like `resolve_model`, but an embedded model needs only its GGUF here, not the HF copy
    (which takes ~30 s to build the first time)."""
    if spec.startswith("embedded:"):
        from casseat_edge.models import embedded_gguf
        from casseat_edge.registry import ARCHS

        path = embedded_gguf(spec.split(":", 1)[1])
        return ModelRef(spec, "embedded", path, ARCHS.get("LlamaForCausalLM"), gguf=path)
    return resolve_model(spec)


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailableError(
            "the llama.cpp backend needs llama-cpp-python; install the extra: pip install "
            f"'casseat-edge[{EXTRA}]' (scripts/setup.sh builds it portably)"
        ) from None
    return llama_cpp
