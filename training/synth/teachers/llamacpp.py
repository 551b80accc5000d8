"""llama.cpp teachers: any GGUF through our libmtmd driver (`llama.cpp:PATH.gguf`), and the
packaged real model (`embedded:smollm2-135m-instruct`).

With an mmproj next to the GGUF (`mmproj-*.gguf`) the teacher sees the image: the GGUF's chat
template renders the image part, libmtmd encodes the image once per problem. Without one it reads
the problem's caption in place of the image (caption-augmented, as MathVista does for text-only
LLMs). Stage 2 continues from stage 1's KV cache: the stage-2 prompt is the stage-1 conversation
plus the reply plus the short review turn, so the session keeps the longest common prefix (same
ids, same image) and evaluates only the rest. Each stage records `new_prefill_tokens` (prompt
tokens actually evaluated), `reused_tokens` and `encoder_runs`. Greedy at temperature 0, else
plain temperature sampling from a generator seeded with `--seed`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import DataError, ModelSpecError
from casseat_edge.formats.mtmd import LlamaSession, Prompt
from casseat_edge.models import embedded_gguf, find_mmproj
from casseat_edge.models.tokenizer import GgufChatTemplate
from casseat_edge.preprocess import load_image, to_text_only
from casseat_edge.registry import ARCHS, TEACHERS
from training.synth.teachers.base import ChatTeacher, Generation, SynthItem


@dataclasses.dataclass
class LlamaCppGeneration(Generation):
    """A generation with what the KV cache and the vision encoder saved."""

    reused_tokens: int = 0  # prompt tokens already in the cache (not evaluated again)
    encoder_runs: int = 0  # vision-encoder runs (one per image tile) for this call


def chat_template(path: Path, session: LlamaSession) -> GgufChatTemplate:
    """The GGUF's own chat template (the same renderer the runtime uses)."""
    llm = session.llm
    return GgufChatTemplate(path, session.piece(llm.token_bos()), session.piece(llm.token_eos()))


class LlamaCppTeacher(ChatTeacher):
    """A GGUF model (+ mmproj) through llama.cpp, stage 2 continuing from stage 1's KV cache."""

    prefix = "llama.cpp"
    spec_help = "llama.cpp:PATH.gguf (mmproj-*.gguf sibling used when present)"
    batch_size = 1  # one sequence at a time, so stage 2 finds stage 1 in the cache

    def __init__(self, spec: str, argument: str, config: Any) -> None:
        super().__init__(spec, argument, config)
        self.path = self._gguf_path()
        self.session = LlamaSession(
            self.path, find_mmproj(self.path), config.n_ctx, threads=config.threads or None,
            seed=config.seed,
        )  # fmt: skip
        self.sees_images = self.session.vision
        self.image_text = (
            ARCHS.get(self.session.architecture).image_text if self.sees_images else ""
        )
        self.template = chat_template(self.path, self.session)
        self._rng = np.random.default_rng(config.seed)

    def _gguf_path(self) -> Path:
        path = Path(self.argument).expanduser()
        if not path.is_file() or path.suffix != ".gguf":
            raise ModelSpecError(f"teacher {self.spec!r}: {path} is not a .gguf file")
        return path

    def generate(
        self, conversations: list[list[dict[str, Any]]], items: list[SynthItem]
    ) -> list[Generation]:
        return [self._generate_one(c, i) for c, i in zip(conversations, items)]

    def _prompt(self, conversation: list[dict[str, Any]], item: SynthItem) -> Prompt:
        if not self.sees_images:
            text = self.template.apply_chat_template(to_text_only(conversation, item.caption))
            return Prompt(self.session.tokenize(text), [])
        text = self.template.apply_chat_template(conversation)
        count = text.count(self.image_text)
        if count and item.image_path is None:
            raise DataError(f"{item.pid}: the prompt has an image part but the problem no image")
        images = [load_image(item.image_path)] * count
        return self.session.tokenize_prompt(
            text.replace(self.image_text, self.session.marker), images
        )

    def _generate_one(self, conversation: list[dict[str, Any]], item: SynthItem) -> Generation:
        prompt = self._prompt(conversation, item)
        if len(prompt.ids) + self.config.max_new_tokens > self.config.n_ctx:
            raise ModelSpecError(
                f"{item.pid}: prompt of {len(prompt.ids)} tokens + {self.config.max_new_tokens} "
                f"new tokens exceeds n_ctx={self.config.n_ctx}; raise --n-ctx"
            )
        start = time.perf_counter()
        runs_before = self.session.encoder_runs
        cached = self._reusable(prompt)
        self.session.truncate(cached)
        logits = self.session.eval(prompt.ids, cached, prompt.images)
        tokens: list[int] = []
        while True:
            token = self._choose(logits)
            if self.session.is_eog(token):
                break
            tokens.append(token)
            if len(tokens) >= self.config.max_new_tokens:
                break
            logits = self.session.step(token)
        return LlamaCppGeneration(
            text=self.session.detokenize(tokens).strip(),
            prompt_tokens=len(prompt.ids),
            new_prefill_tokens=len(prompt.ids) - cached,
            completion_tokens=len(tokens),
            seconds=time.perf_counter() - start,
            reused_tokens=cached,
            encoder_runs=self.session.encoder_runs - runs_before,
        )

    def _reusable(self, prompt: Prompt) -> int:
        """Cached slots to keep: the common prefix, less the last prompt token (its logits are
        needed), never ending inside an image."""
        cached = min(self.session.common_prefix(prompt), len(prompt.ids) - 1)
        for span in prompt.images:
            if span.start < cached < span.end:
                return span.start
        return cached

    def _choose(self, logits: np.ndarray) -> int:
        if self.config.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.config.temperature
        probs = np.exp(scaled - scaled.max())
        return int(self._rng.choice(len(probs), p=probs / probs.sum()))

    def close(self) -> None:
        self.session.close()


class EmbeddedTeacher(LlamaCppTeacher):
    """The packaged SmolLM2-135M-Instruct GGUF (text-only: reads captions)."""

    prefix = "embedded"
    spec_help = "embedded:smollm2-135m-instruct"

    def _gguf_path(self) -> Path:
        return embedded_gguf(self.argument or "smollm2-135m-instruct")


TEACHERS.register("llama.cpp")(LlamaCppTeacher)
TEACHERS.register("embedded")(EmbeddedTeacher)
