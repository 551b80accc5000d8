"""Typed results of the cascade: one `StageResult` per model call, one `Result` per problem.

Field names match the eval result format in DESIGN.md (`results.jsonl` rows), so
`Result.to_dict()` is what an evaluation loop writes.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class StageResult:
    """One model call of a policy: its text, token counts and latency split (milliseconds).

    `prompt_tokens` is the whole conversation the stage saw; `new_prefill_tokens` how many of them
    were actually evaluated (the rest came from the previous stage's KV cache). `encode_ms` is the
    vision encoder's time where it can be separated from prefill, `None` where it cannot;
    `preprocess_ms` covers chat templating, tokenization and image preprocessing.
    """

    name: str
    text: str
    prompt_tokens: int
    new_prefill_tokens: int
    completion_tokens: int
    preprocess_ms: float
    encode_ms: float | None
    prefill_ms: float
    decode_ms: float
    ttft_ms: float
    stop_reason: str  # "stop" (an end-of-generation token) | "length" (max_new_tokens)
    reused_tokens: int = 0  # prompt tokens taken from the KV cache
    drafted_tokens: int = 0  # speculative decoding: draft tokens checked, and of those ...
    accepted_tokens: int = 0  # ... the ones greedy decoding kept (each saves a decode pass)
    verdict: str | None = None
    answer: str | None = None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first, over the decode time."""
        steps = self.completion_tokens - 1
        return steps / (self.decode_ms / 1e3) if steps > 0 and self.decode_ms > 0 else None

    @property
    def prefill_tokens_per_s(self) -> float | None:
        if self.new_prefill_tokens and self.prefill_ms > 0:
            return self.new_prefill_tokens / (self.prefill_ms / 1e3)
        return None

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + (self.encode_ms or 0.0) + self.prefill_ms + self.decode_ms

    def to_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row.update(
            decode_tokens_per_s=_round(self.decode_tokens_per_s),
            prefill_tokens_per_s=_round(self.prefill_tokens_per_s),
            total_ms=round(self.total_ms, 3),
        )
        return row


@dataclasses.dataclass
class Result:
    """The outcome of one problem under one policy and backend."""

    policy: str
    backend: str
    model: str
    stages: list[StageResult]
    answer: str | None
    answer_source: str | None  # the stage the answer came from ("stage2", or a recorded fallback)
    verdict: str | None
    correct: bool | None  # None when the problem fields carry no answer
    prompt_version: str
    prompt_hash: str
    kv_reuse: bool
    pid: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(s.total_ms for s in self.stages)

    @property
    def text(self) -> str:
        """The last stage's text (what an app would show as the final response)."""
        return self.stages[-1].text if self.stages else ""

    def stage(self, name: str) -> StageResult:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        row = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "stages"
        }
        row["stages"] = [s.to_dict() for s in self.stages]
        row["total_ms"] = round(self.total_ms, 3)
        return row


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
