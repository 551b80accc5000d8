"""The llama.cpp backend: any GGUF (the embedded SmolLM2, a `.gguf` path), with its mmproj.

Driven through our own driver (`casseat_edge.formats.mtmd.LlamaSession`), not llama-cpp-python's chat
handlers, which clear the cache on every call: stage 2 continues from the KV state stage 1 left,
so only the stage-2 turn's own tokens are evaluated. Prompts are rendered through the one
preprocessing path with the GGUF's own chat template. With an mmproj next to the GGUF (vision
models), the template's image text becomes libmtmd's marker and the image is encoded once per
solve; its embedding is kept, so even a re-prefill does not run the vision encoder again, and
`encode_ms` (vision encoder) is reported apart from prefill. Without one, models read captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import DataError, ModelSpecError
from casseat_edge.formats.mtmd import EXTRA, LlamaSession
from casseat_edge.models import ModelRef, resolve_model
from casseat_edge.models.tokenizer import GgufChatTemplate
from casseat_edge.registry import ARCHS, BACKENDS
from runtime.backends.base import Encoded, Engine


class TextOnly:
    """The arch stand-in for a bare GGUF: no vision, so prompts read captions."""

    vision = False
    architecture = "gguf"


@BACKENDS.register("llama.cpp", "llamacpp", "gguf")
class LlamaCppEngine(Engine):
    """llama.cpp on GGUF (+ mmproj): stage 2 continues from stage 1's KV state."""

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
        ref = model if isinstance(model, ModelRef) else _resolve(str(model))
        if ref.gguf is None:
            raise ModelSpecError(
                f"{ref.spec}: the llama.cpp backend needs a .gguf file (or "
                "embedded:smollm2-135m-instruct); export one with: casseat-edge export --format gguf"
            )
        if ref.mmproj is None and ref.arch is not None and ref.arch.vision:
            raise ModelSpecError(f"{ref.spec}: a vision model needs its mmproj GGUF next to it")
        self.session = LlamaSession(ref.gguf, ref.mmproj, n_ctx, n_batch, threads, seed)
        self.spec, self.ref, self.path = ref.spec, ref, ref.gguf
        self.arch = ref.arch or _arch_of(self.session)
        self.n_ctx = self.session.n_ctx
        llm = self.session.llm
        self.processor = GgufChatTemplate(
            self.path, self.session.piece(llm.token_bos()), self.session.piece(llm.token_eos())
        )

    def encode(self, messages: list[dict[str, Any]], image: Any, caption: str | None) -> Encoded:
        from casseat_edge.preprocess import load_image, render_prompt

        rendered = render_prompt(self.processor, self.arch, messages, caption)
        if not self.vision:
            return Encoded(self.session.tokenize(rendered))
        count = rendered.count(self.arch.image_text)
        if count and image is None:
            raise DataError("the conversation has an image part but no image was given")
        text = rendered.replace(self.arch.image_text, self.session.marker)
        images = [load_image(image)] * count if count else []  # no image part: a text prompt
        prompt = self.session.tokenize_prompt(text, images)
        extra = {"images": prompt.images} if prompt.images else None
        return Encoded(prompt.ids, extra, prompt.image_end)

    def tokenize(self, text: str) -> list[int]:
        return self.session.tokenize(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.session.detokenize(ids)

    def is_stop(self, token: int) -> bool:
        return self.session.is_eog(token)

    def truncate(self, n_tokens: int) -> None:
        self.session.truncate(n_tokens)

    def prefill(self, ids: list[int], start: int, extra: dict[str, Any] | None) -> np.ndarray:
        # from 0, the prompt's own images (none for text); later, the cache's images stay put
        images = (extra or {}).get("images", []) if start == 0 else None
        return self.session.eval(ids, start, images)

    def step(self, token: int, position: int) -> np.ndarray:
        assert position == len(self.session.ids), (position, len(self.session.ids))
        return self.session.step(token)

    def verify(self, tokens: list[int], position: int) -> np.ndarray:
        assert position == len(self.session.ids), (position, len(self.session.ids))
        return self.session.eval(self.session.ids + tokens, position, all_logits=True)

    def take_encode_ms(self) -> float | None:
        return self.session.take_encode_ms() if self.vision else None

    def close(self) -> None:
        self.session.close()

    def model_bytes(self) -> int:
        files = [self.path, *([self.ref.mmproj] if self.ref.mmproj else [])]
        return sum(p.stat().st_size for p in files)


def _arch_of(session: LlamaSession) -> Any:
    """A bare GGUF's arch: the family its mmproj's projector belongs to, else text-only."""
    if session.vision and session.architecture in ARCHS:
        return ARCHS.get(session.architecture)
    return TextOnly


def _resolve(spec: str) -> ModelRef:
    """Like `resolve_model`, but an embedded model needs only its GGUF here, not the HF copy
    (which takes ~30 s to build the first time)."""
    if spec.startswith("embedded:"):
        from casseat_edge.models import embedded_gguf

        path = embedded_gguf(spec.split(":", 1)[1])
        return ModelRef(spec, "embedded", path, ARCHS.get("LlamaForCausalLM"), gguf=path)
    return resolve_model(spec)
