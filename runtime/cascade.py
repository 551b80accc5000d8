"""`Cascade`: run a policy on one problem with one backend and get a typed `Result`.

    from runtime import Cascade
    cascade = Cascade("embedded:smollm2-135m-instruct", backend="llama.cpp", policy="cas-seat")
    result = cascade.solve("bench/images/rectangle-00003.png", "What is the area?",
                           answer="12", answer_type="integer", caption="A 3 by 4 rectangle.")
    result.answer, result.verdict, result.correct, result.stages[1].new_prefill_tokens

Greedy by default. `on_token(stage_name, piece)` streams text as it is generated and
`on_stage(stage_result)` fires when a stage ends (for apps). Text-only models read the caption
(`caption=` or `metadata={"caption": ...}`) in place of the image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.answers import extract, is_correct
from casseat_edge.errors import ConfigError, DataError
from casseat_edge.models import ModelRef
from casseat_edge.preprocess import load_image
from casseat_edge.prompts import POLICIES, parse_verdict, prompt_info
from casseat_edge.registry import BACKENDS
from runtime.backends import Conversation, Engine
from runtime.policies import POLICY_FUNCTIONS, Run
from runtime.types import Result, StageResult

PROBLEM_FIELDS = ("pid", "choices", "answer", "answer_type", "precision", "unit", "question_type")


class Cascade:
    """A loaded model on one backend, running one cascade policy per `solve` call."""

    def __init__(
        self,
        model: str | Path | ModelRef | Engine,
        backend: str = "torch",
        policy: str = "cas-seat",
        *,
        max_new_tokens: int = 256,
        max_refine_rounds: int = 1,
        kv_reuse: bool = True,
        on_token: Callable[[str, str], None] | None = None,
        on_stage: Callable[[StageResult], None] | None = None,
        **backend_options: Any,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}; expected one of: {', '.join(POLICIES)}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.engine = (
            model if isinstance(model, Engine) else BACKENDS.get(backend)(model, **backend_options)
        )
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.max_refine_rounds = max_refine_rounds
        self.kv_reuse = kv_reuse
        self.on_token, self.on_stage = on_token, on_stage
        self.backend_options = backend_options

    def close(self) -> None:
        """Free the backend's model (llama.cpp holds native memory until closed)."""
        self.engine.close()

    def __enter__(self) -> Cascade:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    @property
    def backend(self) -> str:
        return self.engine.name

    def solve(self, image: Any = None, question: str = "", **problem_fields: Any) -> Result:
        """Run the policy on one problem. Problem fields: MathVista's (`choices`, `answer`,
        `answer_type`, `precision`, `unit`, ...) plus `caption` for text-only models."""
        problem, caption = self._problem(image, question, problem_fields)
        start = time.perf_counter()
        pixels = load_image(image) if image is not None and self.engine.vision else None
        image_ms = (time.perf_counter() - start) * 1e3  # decoding: part of stage 1's preprocess
        conversation = Conversation(self.engine, kv_reuse=self.kv_reuse)
        stages: list[StageResult] = []

        def say(name: str, messages: list[dict[str, Any]]) -> str:
            stream = (lambda piece: self.on_token(name, piece)) if self.on_token else None
            out = conversation.turn(messages, pixels, caption, self.max_new_tokens, stream)
            stage = _stage_result(name, out, problem, image_ms if not stages else 0.0)
            stages.append(stage)
            if self.on_stage:
                self.on_stage(stage)
            return out.raw_text

        outcome = POLICY_FUNCTIONS[self.policy](
            Run(problem, say), {"max_refine_rounds": self.max_refine_rounds}
        )
        correct = is_correct(outcome.answer, problem) if problem.get("answer") is not None else None
        return Result(
            policy=self.policy,
            backend=self.engine.name,
            model=self.engine.spec,
            stages=stages,
            answer=outcome.answer,
            answer_source=outcome.answer_source,
            verdict=outcome.verdict,
            correct=correct,
            kv_reuse=self.kv_reuse,
            pid=problem.get("pid"),
            options={"max_new_tokens": self.max_new_tokens, **self.backend_options},
            **prompt_info(),
        )

    def _problem(
        self, image: Any, question: str, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        if not isinstance(question, str) or not question.strip():
            raise DataError("question: empty; pass the problem's question text")
        unknown = set(fields) - {*PROBLEM_FIELDS, "caption", "metadata", "image"}
        if unknown:
            raise ConfigError(
                f"unknown problem fields {sorted(unknown)}; expected some of "
                f"{sorted({*PROBLEM_FIELDS, 'caption', 'metadata'})}"
            )
        metadata = dict(fields.get("metadata") or {})
        caption = fields.get("caption") or metadata.get("caption")
        problem = {k: fields.get(k) for k in PROBLEM_FIELDS}
        problem.update(question=question, metadata=metadata)
        # an image part is in the prompt when there is an image (or, text-only, its caption)
        text_only = not self.engine.vision
        problem["image"] = "<image>" if image is not None or (caption and text_only) else None
        if problem["question_type"] is None:
            problem["question_type"] = "multi_choice" if problem["choices"] else "free_form"
        return problem, caption


def _stage_result(name: str, out: Any, problem: dict[str, Any], image_ms: float) -> StageResult:
    text = out.raw_text.strip()
    return StageResult(
        name=name,
        text=text,
        prompt_tokens=out.prompt_tokens,
        new_prefill_tokens=out.new_prefill_tokens,
        completion_tokens=out.completion_tokens,
        preprocess_ms=round(out.preprocess_ms + image_ms, 3),
        encode_ms=None if out.encode_ms is None else round(out.encode_ms, 3),
        prefill_ms=round(out.prefill_ms, 3),
        decode_ms=round(out.decode_ms, 3),
        ttft_ms=round(out.ttft_ms + image_ms, 3),
        stop_reason=out.stop_reason,
        reused_tokens=out.reused_tokens,
        verdict=parse_verdict(text),
        answer=extract(text, problem),
    )
