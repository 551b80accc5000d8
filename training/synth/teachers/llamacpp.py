"""llama.cpp teachers: any GGUF through llama-cpp-python (`llama.cpp:PATH.gguf`), and the packaged
real model (`embedded:smollm2-135m-instruct`).

Without an mmproj the teacher reads the problem's caption in place of the image (caption-augmented,
as MathVista does for text-only LLMs). Stage 2 continues from stage 1's KV cache: the stage-2 prompt
is the stage-1 conversation plus the reply plus the short review turn, and llama.cpp keeps the
longest common token prefix of the previous call, so only the new tokens are evaluated. Each
stage's `new_prefill_tokens` records how many prompt tokens were actually evaluated.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from casseat_edge.errors import BackendUnavailableError, ModelSpecError
from casseat_edge.models import embedded_gguf, find_mmproj
from casseat_edge.models.tokenizer import GgufChatTemplate
from casseat_edge.preprocess import to_text_only
from casseat_edge.registry import TEACHERS
from training.synth.teachers.base import ChatTeacher, Generation, SynthItem


def open_llama(path: Path, n_ctx: int, threads: int, seed: int) -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailableError(
            "the llama.cpp teacher needs llama-cpp-python; install the extra: pip install "
            "'casseat-edge[llama]' (built portably by scripts/setup.sh)"
        ) from None
    return llama_cpp.Llama(
        str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(), seed=seed, verbose=False
    )


def chat_template(path: Path, llm: Any) -> GgufChatTemplate:
    """The GGUF's own chat template (the same renderer the runtime uses)."""
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    return GgufChatTemplate(path, bos, eos)


class LlamaCppTeacher(ChatTeacher):
    """A GGUF model through llama.cpp, stage 2 continuing from stage 1's KV cache."""

    prefix = "llama.cpp"
    spec_help = "llama.cpp:PATH.gguf (mmproj-*.gguf sibling used when present)"
    batch_size = 1  # one sequence at a time, so stage 2 finds stage 1 in the cache

    def __init__(self, spec: str, argument: str, config: Any) -> None:
        super().__init__(spec, argument, config)
        self.path = self._gguf_path()
        if find_mmproj(self.path) is not None:
            raise BackendUnavailableError(
                f"{self.path}: image teachers through llama.cpp (mmproj) need the runtime's libmtmd "
                "driver, which is not built yet; move the mmproj file away to use captions"
            )
        self.llm = open_llama(self.path, config.n_ctx, config.threads, config.seed)
        self.template = chat_template(self.path, self.llm)

    def _gguf_path(self) -> Path:
        path = Path(self.argument).expanduser()
        if not path.is_file() or path.suffix != ".gguf":
            raise ModelSpecError(f"teacher {self.spec!r}: {path} is not a .gguf file")
        return path

    def generate(
        self, conversations: list[list[dict[str, Any]]], items: list[SynthItem]
    ) -> list[Generation]:
        return [self._generate_one(c, i) for c, i in zip(conversations, items)]

    def _generate_one(self, conversation: list[dict[str, Any]], item: SynthItem) -> Generation:
        prompt = self.template.apply_chat_template(to_text_only(conversation, item.caption))
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        if len(tokens) + self.config.max_new_tokens > self.config.n_ctx:
            raise ModelSpecError(
                f"{item.pid}: prompt of {len(tokens)} tokens + {self.config.max_new_tokens} new "
                f"tokens exceeds n_ctx={self.config.n_ctx}; raise --n-ctx"
            )
        cached = _common_prefix(self.llm, tokens)
        start = time.perf_counter()
        out = self.llm.create_completion(
            tokens,
            max_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature,
            seed=self.config.seed,
            stop=[self.template.eos],
        )
        usage = out["usage"]
        return Generation(
            text=out["choices"][0]["text"].strip(),
            prompt_tokens=usage["prompt_tokens"],
            new_prefill_tokens=len(tokens) - cached,
            completion_tokens=usage["completion_tokens"],
            seconds=time.perf_counter() - start,
        )

    def close(self) -> None:
        self.llm.close()


def _common_prefix(llm: Any, tokens: list[int]) -> int:
    """Tokens of `tokens` already in llama.cpp's cache (what `generate` will not re-evaluate).
    llama.cpp always re-evaluates at least the last prompt token to get fresh logits."""
    count = 0
    for cached, new in zip(llm._input_ids[: llm.n_tokens], tokens):
        if cached != new:
            break
        count += 1
    return min(count, len(tokens) - 1)


class EmbeddedTeacher(LlamaCppTeacher):
    """The packaged SmolLM2-135M-Instruct GGUF (text-only: reads captions)."""

    prefix = "embedded"
    spec_help = "embedded:smollm2-135m-instruct"

    def _gguf_path(self) -> Path:
        return embedded_gguf(self.argument or "smollm2-135m-instruct")


TEACHERS.register("llama.cpp")(LlamaCppTeacher)
TEACHERS.register("embedded")(EmbeddedTeacher)
