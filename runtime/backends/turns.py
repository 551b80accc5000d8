"""Turn-level engines (vLLM): the engine generates a whole turn from the whole prompt.

`Engine` backends expose token-level hooks (prefill from a position, one decode step, truncate)
and `Conversation` decides what the KV cache keeps. A `TurnEngine` keeps its own cache instead
(vLLM's automatic prefix caching): it is handed the whole conversation's prompt every turn and
reports how many of its tokens were already cached, so stage 2 (stage-1 prompt + reply + review
turn) computes only what is new. `TurnConversation` drives one with the same `turn(...)` as
`Conversation`, through the same preprocessing path (`render_prompt`), and carries the model's own
ids across turns: the stage-2 prompt is stage 1's ids + the reply's generated ids + the tokenized
text the template adds, exactly as `Conversation` builds it, so the prompt is a token-for-token
extension of stage 1 (prefix-cache hits) and greedy text matches the token-level backends.

    conversation = open_conversation(engine, kv_reuse=True)   # Conversation or TurnConversation
    out1 = conversation.turn(stage1_msgs, image=image, caption=caption, max_new_tokens=256)
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Any

from casseat_edge.errors import DataError
from casseat_edge.preprocess import count_images, render_prompt
from runtime.backends.base import Conversation, Engine, TokenCallback, TurnOutput, check_context


@dataclasses.dataclass
class TurnPrompt:
    """One turn's whole prompt: our token ids (image placeholders unexpanded) and its image."""

    ids: list[int]
    image: Any = None  # a PIL image where the prompt has an image placeholder (vision models)


@dataclasses.dataclass
class Generated:
    """What a turn-level engine reports for one generated turn."""

    text: str  # the engine's own decode of the reply
    streamed: str  # what was sent to `on_text` (the conversation sends the rest of the reply)
    token_ids: list[int]  # generated ids, the stop token included when finish_reason is "stop"
    prompt_tokens: int  # as the model saw it (image placeholders expanded)
    cached_tokens: int  # prompt tokens served from the prefix cache
    prefill_s: float  # from submission to the first generated token
    decode_s: float  # from the first generated token to the last
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens)


class TurnEngine(abc.ABC):
    """An engine that generates whole turns and caches prefixes itself (registered in BACKENDS,
    accepted wherever an `Engine` is). Same descriptive attributes as `Engine`."""

    name: str
    extra_name: str  # the pip extra that installs what the backend needs
    processor: Any  # has apply_chat_template (the model's own template)
    arch: Any  # has `.vision` and `.image_text`
    n_ctx: int
    spec: str

    def __init__(self, temperature: float = 0.0, seed: int = 0) -> None:
        self.temperature = temperature
        self.seed = seed

    @property
    def vision(self) -> bool:
        return bool(self.arch.vision)

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Ids of plain template text (special-token markup parsed, no BOS added)."""

    @abc.abstractmethod
    def detokenize(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def generate(
        self, prompt: TurnPrompt, max_new_tokens: int, on_text: TokenCallback | None, reuse: bool
    ) -> Generated:
        """Generate one turn from the whole prompt; `reuse=False` empties the prefix cache first
        (the no-reuse comparison). Streams text pieces to `on_text`."""

    @abc.abstractmethod
    def model_bytes(self) -> int: ...

    def close(self) -> None:
        """Free the engine (no-op where garbage collection suffices)."""
        return None

    def take_encode_ms(self) -> float | None:
        """Turn-level engines do not time the vision encoder apart from prefill."""
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The `casseat-edge list backends` row: the pip extra it needs."""
        return {"extra": cls.extra_name}


class TurnConversation:
    """One conversation on a turn-level engine: the ids and text said so far."""

    def __init__(self, engine: TurnEngine, kv_reuse: bool = True) -> None:
        self.engine = engine
        self.kv_reuse = kv_reuse
        self.ids: list[int] = []
        self.text = ""
        self.image_tokens = 0  # what the engine's placeholder expansion added (known after turn 1)

    def turn(
        self,
        messages: list[dict[str, Any]],
        image: Any = None,
        caption: str | None = None,
        max_new_tokens: int = 256,
        on_token: TokenCallback | None = None,
    ) -> TurnOutput:
        """Render the whole conversation, hand it to the engine, return the reply."""
        start = time.perf_counter()
        rendered = render_prompt(self.engine.processor, self.engine.arch, messages, caption)
        ids, retokenized = self._prompt_ids(rendered)
        # before turn 1 the image expansion is unknown: the engine checks that turn itself
        check_context(len(ids) + self.image_tokens, max_new_tokens, self.engine.n_ctx)
        prompt = TurnPrompt(ids, self._image(messages, image))
        preprocess_s = time.perf_counter() - start
        out = self.engine.generate(prompt, max_new_tokens, on_token, self.kv_reuse)
        reply_ids = out.token_ids[:-1] if out.finish_reason == "stop" else list(out.token_ids)
        # the reply text is our tokenizer's decode, as on the token-level backends
        reply = self.engine.detokenize(reply_ids)
        if on_token and reply.startswith(out.streamed) and len(reply) > len(out.streamed):
            on_token(reply[len(out.streamed) :])  # the pieces always add up to the reply
        self.ids, self.text = ids + reply_ids, rendered + reply
        self.image_tokens = max(0, out.prompt_tokens - len(ids))
        return TurnOutput(
            raw_text=reply,
            prompt_tokens=out.prompt_tokens,
            new_prefill_tokens=out.prompt_tokens - out.cached_tokens,
            reused_tokens=out.cached_tokens,
            completion_tokens=len(out.token_ids),
            preprocess_ms=preprocess_s * 1e3,
            encode_ms=self.engine.take_encode_ms(),
            prefill_ms=out.prefill_s * 1e3,
            decode_ms=out.decode_s * 1e3,
            ttft_ms=(preprocess_s + out.prefill_s) * 1e3,
            stop_reason=out.finish_reason,
            retokenized=retokenized,
        )

    def _prompt_ids(self, rendered: str) -> tuple[list[int], bool]:
        if self.ids and rendered.startswith(self.text):
            # the model's own ids for everything said so far, then the template's new text
            return self.ids + self.engine.tokenize(rendered[len(self.text) :]), False
        return self.engine.tokenize(rendered), bool(self.ids)

    def _image(self, messages: list[dict[str, Any]], image: Any) -> Any:
        if not self.engine.vision or not count_images(messages):
            return None  # text-only models read the caption in place of the image
        if image is None:
            raise DataError("the conversation has an image part but no image was given")
        return image


def open_conversation(
    engine: Engine | TurnEngine, kv_reuse: bool = True, drafter: Any = None, draft_tokens: int = 0
) -> Conversation | TurnConversation:
    """The conversation driver for an engine: token-level (with speculative decoding from
    `drafter` where `draft_tokens` > 0) or turn-level (vLLM schedules its own decoding)."""
    if isinstance(engine, TurnEngine):
        return TurnConversation(engine, kv_reuse=kv_reuse)
    return Conversation(engine, kv_reuse, drafter, draft_tokens)
