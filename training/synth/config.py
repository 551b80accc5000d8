"""`SynthConfig`: every knob of `casseat-edge synth`, with its help text (the CLI's help)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SynthConfig(StageConfig):
    """Config of the synthesis stage."""

    problems: str = option(
        "", "problem set: a directory with problems.jsonl or an official dataset file"
    )
    teacher: str = option("procedural", "teacher spec (see `casseat-edge list teachers`)")
    out: str = option("synth", "output directory")
    mode: Literal["cas-seat", "seat"] = option(
        "cas-seat", "cascaded short prompts, or one long SEAT prompt"
    )
    limit: int = option(0, "synthesize at most this many problems after source filtering (0: all)")
    resume: bool = option(False, "continue an interrupted run in --out instead of refusing it")
    split: str = option("train", "use only problems whose metadata.split is this ('' for all)")
    seed: int = option(0, "seed for error injection, mixing and the held-out split")
    error_rate: float = option(
        0.3, "procedural teacher: fraction of stage-1 solutions with an injected error"
    )
    eval_error_rate: float = option(
        0.1, "procedural teacher: fraction of stage-2 reviews that are themselves wrong"
    )
    wording: Literal["varied", "plain"] = option(
        "varied",
        "procedural teacher: 'varied' (a random one of several phrasings per line) or 'plain' "
        "(always the shortest phrasing, no opener: fewer tokens to learn and to generate)",
    )
    eval_fraction: float = option(0.5, "share of evaluation samples in the CoT + evaluation mix")
    held_out: float = option(0.1, "fraction of problems (by image) kept out of training samples")
    max_new_tokens: int = option(384, "generation budget per stage for model teachers")
    temperature: float = option(0.0, "sampling temperature for model teachers (0: greedy)")
    batch_size: int = option(4, "problems per generate call (hf and vllm teachers)")
    concurrency: int = option(4, "requests in flight at once (openai teacher)")
    timeout_s: float = option(120.0, "per-request timeout in seconds (openai teacher)")
    retries: int = option(3, "retries with exponential backoff per request (openai teacher)")
    n_ctx: int = option(4096, "context window for llama.cpp teachers")
    threads: int = option(0, "CPU threads for llama.cpp / torch teachers (0: all cores)")
    judge: str = option(
        "",
        "optional judge teacher spec: evaluation samples whose verdict it disagrees with are dropped",
    )
    families: tuple[str, ...] = option((), "source filter: keep only these metadata.family values")
    max_question_chars: int = option(2000, "source filter: longest question kept")
    max_image_pixels: int = option(16_000_000, "source filter: largest image (width x height) kept")
    skip_invalid: bool = option(False, "skip invalid problem rows instead of failing")
    trust_remote_code: bool = option(
        False, "allow custom model code for hf teachers (off by default)"
    )

    def __post_init__(self) -> None:
        if not self.problems:
            raise ConfigError(
                "--problems: required; pass a directory with problems.jsonl or a dataset file"
            )
        for name in ("error_rate", "eval_error_rate", "eval_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # also refuses nan
                raise ConfigError(
                    f"{_flag(name)}: must be between 0 and 1, found {getattr(self, name)}"
                )
        if not 0.0 <= self.held_out < 1.0:
            raise ConfigError(f"--held-out: must be in [0, 1), found {self.held_out}")
        if not 0.0 < self.timeout_s < float("inf"):
            raise ConfigError(
                f"--timeout-s: must be a finite number of seconds > 0, found {self.timeout_s}"
            )
        if not 0.0 <= self.temperature < float("inf"):
            raise ConfigError(
                f"--temperature: must be a finite number >= 0, found {self.temperature}"
            )
        self._check_at_least(0, "limit", "retries", "threads")
        self._check_at_least(1, "max_new_tokens", "batch_size", "concurrency", "n_ctx")
        self._check_at_least(1, "max_question_chars", "max_image_pixels")

    def _check_at_least(self, low: int, *names: str) -> None:
        for name in names:
            if getattr(self, name) < low:
                raise ConfigError(f"{_flag(name)}: must be >= {low}, found {getattr(self, name)}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
