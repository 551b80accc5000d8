"""The main job's configuration: `PipelineConfig`, its stage names and defaults (read by
`casseat_cli.pipeline`, which runs the job, and `casseat_cli.pipeline_stages`, its stages)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError
from casseat_edge.prompts import Policy

STAGES = ("bench", "model", "synth", "train", "export", "eval", "report")
STUDENTS = {"cas-seat": "cas-seat", "cot": "cot-only", "seat": "seat"}
# --student: its `student:<preset>`, and its mix budget (steps, batch size; --fast steps)
STUDENT_KINDS = {"smollm2": "smollm2", "scratch": "smolvlm"}
BUDGETS = {
    "smollm2": {"steps": 100, "fast_steps": 3, "warmup_steps": 0},
    "scratch": {"steps": 400, "fast_steps": 12, "warmup_steps": 10},
}
EVALUATE = ("llama.cpp/q8_0", "llama.cpp/q4_k_m", "onnxruntime/int8", "torch/fp32")


@dataclasses.dataclass(frozen=True)
class PipelineConfig(StageConfig):
    """Config of the main job."""

    out: str = option("runs/main", "output directory; each stage writes a subdirectory")
    fast: bool = option(False, "a small end-to-end run (CI-sized) instead of the full one")
    ablation: bool = option(
        False, "also train CoT-only and SEAT students with the same budget and compare all three"
    )
    seed: int = option(7, "seed for the benchmark and every later stage")
    n: int = option(1000, "benchmark size (--fast: at most 120)")
    student: str = option(
        "smollm2",
        "the student: 'smollm2' (SmolVLM's text model, the packaged SmolLM2-135M-Instruct, with "
        "a small vision tower, trained with LoRA) or 'scratch' (a 3M-parameter Idefics3 "
        "trained from scratch over a domain vocabulary)",
    )
    train_steps: int = option(
        0, "student steps on the Cas-SEAT mix (0: smollm2 100, scratch 400; --fast: 3 / 12)"
    )
    real_teacher: str = option(
        "embedded:smollm2-135m-instruct", "the real teacher of the small synthesis slice"
    )
    real_teacher_problems: int = option(10, "problems for the real-teacher slice (--fast: 3)")
    gguf_quants: tuple[str, ...] = option(("q8_0", "q4_k_m"), "GGUF text-model types")
    gptq: bool = option(
        True,
        "re-round the q5_0 / q4_0 tensors of the quantized GGUFs with GPTQ, calibrated on the "
        "student's training samples (q4_k_m of the 135M student: f16's accuracy on the 187 "
        "held-out problems, where llama.cpp's rounding loses 7 points; under a minute per file; "
        "not in --fast, which stays CI-sized); --no-gptq: llama.cpp's rounding",
    )
    onnx_quants: tuple[str, ...] = option(
        ("fp32", "int8"), "ONNX variants (one directory; empty: no ONNX export)"
    )
    bnb_methods: tuple[str, ...] = option((), "bitsandbytes checkpoints (torch backend)")
    evaluate: tuple[str, ...] = option(
        EVALUATE,
        "artifacts evaluated, as backend/quant (each must be exported: torch/fp32 is the "
        "trained student itself); the first is the headline",
    )
    policies: tuple[Policy, ...] = option(
        ("cot", "cas-seat"),
        "cascade policies evaluated (cot is read off cas-seat's stage 1 where both are: the same "
        "prompt, greedy)",
    )
    eval_limit: int = option(
        0,
        "held-out problems per evaluation (0: 100 for the headline artifact, 30 for the others; "
        "--fast: 5 and 3; -1: all of them)",
    )
    torch_eval_limit: int = option(
        0,
        "held-out problems per torch evaluation, the slowest backend (0: 10; --fast: 3; "
        "-1: as --eval-limit)",
    )
    max_new_tokens: int = option(
        0,
        "generation budget per stage in evaluations (0: 224, which holds 95% of the procedural "
        "teacher's reviews; --fast: 64); seat, whose one generation holds the solution and its "
        "checks, gets two stages' worth, as cas-seat does",
    )
    threads: int = option(
        0, "CPU threads for llama.cpp and onnxruntime (0: all cores; 1 on a busy machine)"
    )
    draft_tokens: int = option(
        8,
        "speculative decoding in evaluations: drafts of up to this many tokens from the "
        "student's earlier replies, checked in one pass (0: one token per pass)",
    )

    def __post_init__(self) -> None:
        if self.n < 10:
            raise ConfigError(f"--n: {self.n} is too small for a train/held-out split; use >= 10")
        if min(self.eval_limit, self.torch_eval_limit) < -1:
            raise ConfigError("--eval-limit and --torch-eval-limit: must be >= -1")
        if min(self.max_new_tokens, self.train_steps, self.draft_tokens) < 0:
            raise ConfigError("--max-new-tokens, --train-steps and --draft-tokens: must be >= 0")
        if self.student not in STUDENT_KINDS:
            raise ConfigError(
                f"--student: expected one of {', '.join(STUDENT_KINDS)}, got {self.student!r}"
            )
        if not self.evaluate:
            raise ConfigError("--evaluate: name at least one backend/quant, e.g. llama.cpp/q8_0")
        exported = self.exported
        for item in self.evaluate:
            if item not in exported:
                raise ConfigError(
                    f"--evaluate: {item!r} is not exported by this run; choose from "
                    f"{', '.join(exported)} (or add its type to --gguf-quants/--onnx-quants)"
                )

    @property
    def exported(self) -> list[str]:
        """Every artifact of the run as backend/quant (torch/fp32: the trained student)."""
        return [
            "torch/fp32",
            *(f"llama.cpp/{q}" for q in self.gguf_quants),
            *(f"onnxruntime/{q}" for q in self.onnx_quants),
            *(f"torch/{m}" for m in self.bnb_methods),
        ]

    @property
    def gptq_samples(self) -> int:
        """Training samples the GGUF exports' GPTQ calibrates on; 0: no GPTQ (--no-gptq, and
        --fast, where it would take 50 of the run's 180 seconds)."""
        return 64 if self.gptq and not self.fast else 0

    @property
    def bench_size(self) -> int:
        return min(self.n, 120) if self.fast else self.n

    @property
    def preset(self) -> str:
        return STUDENT_KINDS[self.student]

    @property
    def student_budget(self) -> dict[str, int]:
        """Overrides of the student's recipe (the same for every ablation student)."""
        budget = BUDGETS[self.student]
        if self.fast:
            return {"steps": self.train_steps or budget["fast_steps"],
                    "warmup_steps": min(budget["warmup_steps"], 3), "batch_size": 4,
                    "caption_eval": 10}  # fmt: skip
        return {"steps": self.train_steps or budget["steps"],
                "warmup_steps": budget["warmup_steps"], "batch_size": 8}  # fmt: skip

    def held_out_limit(self, label: str) -> int:
        """Held-out problems per evaluation of the artifact `label` (backend/quant; 0: all)."""
        if self.eval_limit < 0:
            limit = 0  # evaluate() reads 0 as "all"
        elif self.eval_limit:
            limit = self.eval_limit
        elif label == self.evaluate[0]:
            limit = 5 if self.fast else 100
        else:
            limit = 3 if self.fast else 30
        if not label.startswith("torch/") or self.torch_eval_limit < 0:
            return limit
        torch = self.torch_eval_limit or (3 if self.fast else 10)
        return min(torch, limit) if limit else torch

    @property
    def generation_budget(self) -> int:
        return self.max_new_tokens or (64 if self.fast else 224)

    def generation_budget_for(self, policy: str) -> int:
        """Tokens per generation for `policy`: `seat` writes the solution and its checks in one
        generation, so it gets cas-seat's two stages (the same tokens per problem). At one
        stage's budget the SEAT student's checked solutions were cut on 62 of 100 problems."""
        return self.generation_budget * (2 if policy == "seat" else 1)


Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]
