"""What every runtime backend provides, and the conversation driver they share.

A backend is an `Engine`: a handful of hooks over one loaded model (tokenize, prefill from a
position, one decode step, truncate the KV cache). `Conversation` runs the cascade's turns on any
engine. Every turn is rendered through the one preprocessing path (`casseat_edge.preprocess`) with
the whole conversation so far, so the model sees exactly the prompt it was trained on. With KV
reuse, the tokens of the earlier turns are not re-evaluated: the new turn's token ids are the ids
the model already holds (prompt + its own generated ids) followed by the tokenized text the chat
template adds after the previous reply, and only those are prefilled. With a drafter
(`runtime.draft.NgramDrafter`, greedy decoding only), a decode pass evaluates the last token and a
draft after it in one `Engine.verify` call and keeps what greedy decoding would have chosen.

    conv = Conversation(engine)
    out1 = conv.turn(stage1_msgs, image=image, caption=caption, max_new_tokens=256)
    out2 = conv.turn(stage1_msgs + [assistant(out1.raw_text), *stage2_messages()], ...)
    out2.new_prefill_tokens   # only the stage-2 turn's own tokens
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from casseat_edge.errors import DataError
from casseat_edge.preprocess import render_prompt

TokenCallback = Callable[[str], None]


@dataclasses.dataclass
class Encoded:
    """A whole conversation as token ids, plus the non-text inputs of its first prefill."""

    ids: list[int]
    extra: dict[str, Any] | None = None  # pixel tensors etc., passed when prefilling from 0
    image_end: int = 0  # index after the last image token: a prefill never starts inside an image


@dataclasses.dataclass
class TurnOutput:
    """What one turn produced (the raw reply text is what goes back into the conversation)."""

    raw_text: str
    prompt_tokens: int
    new_prefill_tokens: int
    reused_tokens: int
    completion_tokens: int
    preprocess_ms: float
    encode_ms: float | None
    prefill_ms: float
    decode_ms: float
    ttft_ms: float
    stop_reason: str
    retokenized: bool  # the template rewrote earlier turns: the conversation was re-encoded
    drafted_tokens: int = 0  # speculative decoding: draft tokens checked ...
    accepted_tokens: int = 0  # ... and how many of them greedy decoding kept


class Engine(abc.ABC):
    """Backend hooks over one loaded model. Subclasses are registered in `BACKENDS`."""

    name: str
    extra_name: str  # the pip extra that installs what the backend needs
    processor: Any  # has apply_chat_template (the model's own template)
    arch: Any  # has `.vision`
    n_ctx: int
    spec: str

    def __init__(self, temperature: float = 0.0, seed: int = 0) -> None:
        self.temperature = temperature
        self._rng = np.random.default_rng(seed)

    @property
    def vision(self) -> bool:
        return bool(self.arch.vision)

    @abc.abstractmethod
    def encode(self, messages: list[dict[str, Any]], image: Any, caption: str | None) -> Encoded:
        """The whole conversation through the one preprocessing path."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Ids of plain template text (special-token markup parsed, no BOS added)."""

    @abc.abstractmethod
    def detokenize(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def is_stop(self, token: int) -> bool: ...

    @abc.abstractmethod
    def truncate(self, n_tokens: int) -> None:
        """Keep only the first `n_tokens` positions of the KV cache (0 drops it)."""

    @abc.abstractmethod
    def prefill(self, ids: list[int], start: int, extra: dict[str, Any] | None) -> np.ndarray:
        """Evaluate ids[start:] on top of a cache holding ids[:start]; the last position's logits."""

    @abc.abstractmethod
    def step(self, token: int, position: int) -> np.ndarray:
        """Evaluate one token at `position`; its logits."""

    def verify(self, tokens: list[int], position: int) -> np.ndarray | None:
        """Evaluate `tokens` at `position`, `position + 1`, ... in one forward pass (speculative
        decoding checks a draft this way); the logits after each, [len(tokens), vocab]. The
        caller truncates the cache to what it keeps. None: this backend steps one at a time."""
        return None

    @abc.abstractmethod
    def model_bytes(self) -> int: ...

    def close(self) -> None:
        """Free the model's native resources (no-op where garbage collection suffices)."""
        return None

    def take_encode_ms(self) -> float | None:
        """Vision-encoder time of the last prefill, where the backend can separate it."""
        return None

    def choose(self, logits: np.ndarray) -> int:
        """Greedy by default; temperature sampling from the engine's seeded generator."""
        if self.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        probs = np.exp(scaled - scaled.max())
        return int(self._rng.choice(len(probs), p=probs / probs.sum()))

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The `casseat-edge list backends` row: the pip extra it needs."""
        return {"extra": cls.extra_name}


class HfTokenizerHooks:
    """Text hooks of engines that hold an HF tokenizer (`self.tokenizer`) and stop ids
    (`self._stops`): the torch and onnxruntime engines."""

    tokenizer: Any
    _stops: set[int]

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def is_stop(self, token: int) -> bool:
        return token in self._stops


def common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def check_context(prompt_tokens: int, max_new_tokens: int, n_ctx: int) -> None:
    """A turn must fit: its prompt plus the generation budget within the model's context."""
    if prompt_tokens + max_new_tokens > n_ctx:
        raise DataError(
            f"prompt of {prompt_tokens} tokens + max_new_tokens {max_new_tokens} exceeds the "
            f"context of {n_ctx} tokens; lower max_new_tokens, shorten the "
            "question or raise n_ctx (image tokens are never cut)"
        )


class Conversation:
    """One conversation on an engine: the ids and text so far and how much of it is in the cache."""

    def __init__(
        self, engine: Engine, kv_reuse: bool = True, drafter: Any = None, draft_tokens: int = 0
    ) -> None:
        self.engine = engine
        self.kv_reuse = kv_reuse
        # speculative decoding (greedy only): drafts of up to `draft_tokens` from `drafter`
        speculate = drafter is not None and draft_tokens > 0 and engine.temperature <= 0
        self.drafter, self.draft_tokens = (drafter, draft_tokens) if speculate else (None, 0)
        self.ids: list[int] = []
        self.text = ""
        self.cached = 0
        self.extra: dict[str, Any] | None = None
        self.image_end = 0
        engine.truncate(0)

    def turn(
        self,
        messages: list[dict[str, Any]],
        image: Any = None,
        caption: str | None = None,
        max_new_tokens: int = 256,
        on_token: TokenCallback | None = None,
    ) -> TurnOutput:
        """Render the whole conversation, prefill what the cache lacks, decode the reply."""
        start = time.perf_counter()
        rendered = render_prompt(self.engine.processor, self.engine.arch, messages, caption)
        target, retokenized = self._target_ids(rendered, messages, image, caption)
        self._check_context(len(target), max_new_tokens)
        begin = self._prefill_start(target)
        self.engine.truncate(begin)
        preprocess_s = time.perf_counter() - start
        t0 = time.perf_counter()
        logits = self.engine.prefill(target, begin, self.extra if begin == 0 else None)
        token = self.engine.choose(logits)
        prefill_s = time.perf_counter() - t0
        encode_ms = self.engine.take_encode_ms()
        ttft_ms = (time.perf_counter() - start) * 1e3
        streamer = _Streamer(self.engine, on_token) if on_token else None
        decoded = _Decoded([token])
        self._decode(decoded, target, max_new_tokens, streamer)
        generated, decode_s, stop = decoded.ids, decoded.seconds, decoded.stop
        reply_ids = generated[:-1] if stop == "stop" else generated
        if self.drafter is not None:
            self.drafter.observe(reply_ids)
        reply = self.engine.detokenize(reply_ids)
        if streamer:
            streamer.finish(reply)
        self.ids = target + reply_ids
        self.cached = len(target) + len(generated) - 1
        self.text = rendered + reply
        prefill_ms = prefill_s * 1e3 - (encode_ms or 0.0)
        return TurnOutput(
            raw_text=reply,
            prompt_tokens=len(target),
            new_prefill_tokens=len(target) - begin,
            reused_tokens=begin,
            completion_tokens=len(generated),
            preprocess_ms=preprocess_s * 1e3,
            encode_ms=encode_ms,
            prefill_ms=prefill_ms,
            decode_ms=decode_s * 1e3,
            ttft_ms=ttft_ms,
            stop_reason=stop,
            retokenized=retokenized,
            drafted_tokens=decoded.drafted,
            accepted_tokens=decoded.accepted,
        )

    def _target_ids(
        self, rendered: str, messages: list[dict[str, Any]], image: Any, caption: str | None
    ) -> tuple[list[int], bool]:
        if self.ids and rendered.startswith(self.text):
            # the model's own ids for everything said so far, then the template's new text
            return self.ids + self.engine.tokenize(rendered[len(self.text) :]), False
        encoded = self.engine.encode(messages, image, caption)
        self.extra, self.image_end = encoded.extra, encoded.image_end
        return encoded.ids, bool(self.ids)

    def _prefill_start(self, target: list[int]) -> int:
        if not self.kv_reuse:
            return 0
        begin = common_prefix(self.ids[: self.cached], target)
        begin = min(begin, len(target) - 1)  # the last prompt token is always evaluated (logits)
        return 0 if begin < self.image_end else begin

    def _check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_context(prompt_tokens, max_new_tokens, self.engine.n_ctx)

    def _decode(
        self,
        out: _Decoded,
        target: list[int],
        max_new_tokens: int,
        streamed: _Streamer | None,
    ) -> None:
        """Decode after the prompt `target` until a stop token or the budget; `out.ids` starts
        with the prefill's token. Each pass evaluates the last token (not yet in the cache) at
        `position`, with a draft after it where one is likely."""
        engine, generated = self.engine, out.ids
        position = len(target)
        while True:
            if engine.is_stop(generated[-1]):
                out.stop = "stop"
                return
            if streamed:
                streamed.push(generated)
            if len(generated) >= max_new_tokens:
                out.stop = "length"
                return
            t0 = time.perf_counter()
            new = self._speculate(out, target, max_new_tokens, position)
            if new is None:
                new = [engine.choose(engine.step(generated[-1], position))]
            out.seconds += time.perf_counter() - t0
            position += len(new)
            generated += new

    def _speculate(
        self, out: _Decoded, target: list[int], max_new_tokens: int, position: int
    ) -> list[int] | None:
        """One pass over the last token and a draft: the tokens greedy decoding picks (the
        draft's longest matching prefix, then its own next one, cut after a stop token), with
        the cache truncated to what they were evaluated on. None: no draft, or no `verify`."""
        room = min(self.draft_tokens, max_new_tokens - len(out.ids) - 1)
        if self.drafter is None or room <= 0:
            return None
        tail = self.drafter.max_n  # the drafter reads the last few tokens only
        draft = self.drafter.propose(target[-tail:] + out.ids[-tail:], room)
        if not draft:
            return None
        logits = self.engine.verify([out.ids[-1], *draft], position)
        if logits is None:
            self.drafter = None  # this backend cannot check drafts: plain steps from now on
            return None
        new: list[int] = []
        for row, proposed in zip(logits, [*draft, None]):
            token = self.engine.choose(row)
            new.append(token)
            if token != proposed or self.engine.is_stop(token):
                break
        out.drafted += len(draft)
        out.accepted += sum(1 for token, proposed in zip(new, draft) if token == proposed)
        # kept in the cache: the last token and the accepted draft tokens (`new` minus its last)
        self.engine.truncate(position + len(new))
        return new


@dataclasses.dataclass
class _Decoded:
    """What `_decode` produced: the ids (with a final stop token, if any), the time the decode
    passes took, why it stopped, and the speculative-decoding counts."""

    ids: list[int]
    seconds: float = 0.0
    stop: str = ""
    drafted: int = 0
    accepted: int = 0


class _Streamer:
    """Turns the growing id list into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self, engine: Engine, callback: TokenCallback) -> None:
        self.engine, self.callback, self.sent = engine, callback, ""

    def push(self, ids: list[int]) -> None:
        text = self.engine.detokenize(ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        piece, self.sent = text[len(self.sent) :], text
        if piece:
            self.callback(piece)

    def finish(self, reply: str) -> None:
        """Send what was held back, so the pieces always add up to the reply."""
        if reply.startswith(self.sent) and len(reply) > len(self.sent):
            self.callback(reply[len(self.sent) :])
