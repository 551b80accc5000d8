"""`Cascade`: run a policy on one problem with one backend and get a typed `Result`.

    from runtime import Cascade
    cascade = Cascade("embedded:smollm2-135m-instruct", backend="llama.cpp", policy="cas-seat")
    result = cascade.solve("bench/images/rectangle-00003.png", "What is the area?",
                           answer="12", answer_type="integer", caption="A 3 by 4 rectangle.")
    result.answer, result.verdict, result.correct, result.stages[1].new_prefill_tokens

How it runs (backend, policy, budgets, KV reuse, captions, backend options) is a
`runtime.config.CascadeConfig`: `Cascade(model, config)`, or keywords that build one as above.
Greedy by default, with speculative decoding (`draft_tokens`, 8; 0: off): each decode pass
checks a draft made from the replies of earlier solves on this `Cascade` (`runtime.draft`).
`on_token(stage_name, piece)` streams text as it is generated and
`on_stage(stage_result)` fires when a stage ends (for apps). Text-only models read the caption
(`caption=` or `metadata={"caption": ...}`) in place of the image. With `captions=True` a vision
model reads it too, right after the image (caption-augmented, as the demo student is trained);
the default follows the model's training manifest (`trained_with_captions`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.answers import extract, is_correct
from casseat_edge.artifacts import MANIFEST
from casseat_edge.errors import ConfigError, DataError
from casseat_edge.models import ModelRef
from casseat_edge.preprocess import add_caption, load_image
from casseat_edge.prompts import parse_verdict, prompt_info
from casseat_edge.registry import BACKENDS
from runtime.backends import Engine, TurnEngine, open_conversation
from runtime.config import CascadeConfig, flag
from runtime.draft import NgramDrafter
from runtime.policies import POLICY_FUNCTIONS, Run
from runtime.types import Result, StageResult

PROBLEM_FIELDS = ("pid", "choices", "answer", "answer_type", "precision", "unit", "question_type")


class Cascade:
    """A loaded model on one backend, running one cascade policy per `solve` call.

    `Cascade(model, config)` with a `CascadeConfig`; keywords build one (or replace its fields):
    `Cascade(model, backend="llama.cpp", policy="cot")`. `model` is a model spec, or an engine
    that is already open (then the config's backend and backend options do not apply)."""

    def __init__(
        self,
        model: str | Path | ModelRef | Engine | TurnEngine,
        config: CascadeConfig | None = None,
        *,
        on_token: Callable[[str, str], None] | None = None,
        on_stage: Callable[[StageResult], None] | None = None,
        **options: Any,
    ) -> None:
        self.config = config = _config(config, options)
        self.backend_options = config.backend_options()
        if isinstance(model, (Engine, TurnEngine)):
            if self.backend_options:
                raise ConfigError(
                    f"{', '.join(map(flag, self.backend_options))}: the engine is already open; "
                    "pass these options to its constructor (or pass a model spec)"
                )
            self.engine = model
        else:
            self.engine = BACKENDS.get(config.backend)(model, **self.backend_options)
        # caption-augmented prompts (vision models; text-only models read the caption anyway):
        # by default as the model was trained (its manifest's `captions`)
        captions = config.captions
        wanted = trained_with_captions(self.engine.spec) if captions is None else captions
        self.captions = bool(wanted) and self.engine.vision
        self.on_token, self.on_stage = on_token, on_stage
        # speculative decoding's drafts come from the replies of every solve on this cascade
        self.drafter = NgramDrafter() if config.draft_tokens else None

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

    @property
    def policy(self) -> str:
        return self.config.policy

    def solve(self, image: Any = None, question: str = "", **problem_fields: Any) -> Result:
        """Run the policy on one problem. Problem fields: MathVista's (`choices`, `answer`,
        `answer_type`, `precision`, `unit`, ...) plus `caption` for text-only models."""
        problem, caption = self._problem(image, question, problem_fields)
        start = time.perf_counter()
        pixels = load_image(image) if image is not None and self.engine.vision else None
        image_ms = (time.perf_counter() - start) * 1e3  # decoding: part of stage 1's preprocess
        config = self.config
        conversation = open_conversation(
            self.engine, config.kv_reuse, self.drafter, config.draft_tokens
        )
        stages: list[StageResult] = []

        def say(name: str, messages: list[dict[str, Any]]) -> str:
            stream = (lambda piece: self.on_token(name, piece)) if self.on_token else None
            if self.captions:
                messages = add_caption(messages, caption)
            out = conversation.turn(messages, pixels, caption, config.max_new_tokens, stream)
            stage = _stage_result(name, out, problem, image_ms if not stages else 0.0)
            stages.append(stage)
            if self.on_stage:
                self.on_stage(stage)
            return out.raw_text

        outcome = POLICY_FUNCTIONS[config.policy](
            Run(problem, say), {"max_refine_rounds": config.max_refine_rounds}
        )
        correct = is_correct(outcome.answer, problem) if problem.get("answer") is not None else None
        return Result(
            policy=config.policy,
            backend=self.engine.name,
            model=self.engine.spec,
            stages=stages,
            answer=outcome.answer,
            answer_source=outcome.answer_source,
            verdict=outcome.verdict,
            correct=correct,
            kv_reuse=config.kv_reuse,
            pid=problem.get("pid"),
            options={
                "max_new_tokens": config.max_new_tokens,
                "captions": self.captions,
                "draft_tokens": config.draft_tokens,
                **self.backend_options,
            },
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


def _config(config: CascadeConfig | None, options: dict[str, Any]) -> CascadeConfig:
    """`config`, with `options` (CascadeConfig fields; unknown ones all named at once) over it."""
    if config is not None and not isinstance(config, CascadeConfig):
        raise ConfigError(
            f"Cascade: config must be a CascadeConfig, found {type(config).__name__}; pass "
            "backend=..., policy=... as keywords"
        )
    names = [f.name for f in dataclasses.fields(CascadeConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(
            f"Cascade: unknown option(s) {', '.join(unknown)}; expected some of {', '.join(names)}"
        )
    if config is None:
        return CascadeConfig(**options)
    return dataclasses.replace(config, **options) if options else config


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
        drafted_tokens=out.drafted_tokens,
        accepted_tokens=out.accepted_tokens,
        verdict=parse_verdict(text),
        answer=extract(text, problem),
    )


def trained_with_captions(spec: str | Path) -> bool:
    """Whether the model behind `spec` was trained on caption-augmented prompts: the `captions`
    of its training manifest (an HF directory's `casseat.json`), followed from an export's
    manifest (a directory, or the directory of a `.gguf` / `.onnx` file) to the model it was
    exported from. False for specs without a manifest (`tiny:`, `embedded:`, plain files)."""
    path = Path(str(spec))
    for _ in range(3):  # export dir -> source model dir; no longer chains exist
        manifest = _manifest_near(path)
        if manifest is None:
            return False
        if "captions" in manifest:
            return bool(manifest["captions"])
        source = (manifest.get("config") or {}).get("model")
        if manifest.get("kind") != "export" or not source:
            return False
        path = Path(str(source))
    return False


def _manifest_near(path: Path) -> dict[str, Any] | None:
    if not path.exists():  # `tiny:...`, `embedded:...`
        return None
    file = (path if path.is_dir() else path.parent) / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None
