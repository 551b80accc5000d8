"""The main job, `casseat-edge pipeline`: every stage in order on the embedded default, offline.

1. `bench`  - the synthetic benchmark with its train / held-out split;
2. `model`  - the packaged SmolLM2's tokenizer (the teacher's; the student's vocabulary is cut
              from it) checked against llama.cpp's on every benchmark text: the student must
              tokenize exactly as its deployed GGUF does (each export verifies its own again);
3. `synth`  - Cas-SEAT data from the procedural teacher on the train split, plus a small slice
              from the real packaged SmolLM2 teacher (llama.cpp), both through DDF; `--ablation`
              adds CoT-only and SEAT data from the same problems;
4. `train`  - the student (`--student`: the pretrained `smollm2` preset with LoRA, or `scratch`)
              trained on the Cas-SEAT mix (and, with `--ablation`, a CoT-only and a SEAT student
              of the same family with the same budget);
5. `export` - GGUF (text + mmproj) per llama.cpp type, ONNX (transformers.js' layout) per type, and
              bitsandbytes checkpoints, each verified against the trained student (an ablation
              student exports only the headline artifact, the first of `--evaluate`);
6. `eval`   - the `--evaluate` artifacts with each policy on the held-out split (torch, the
              slowest backend, on fewer problems; cot read off cas-seat's stage 1); ablation
              students with cot, cas-seat, seat;
7. `report` - the latency/accuracy tradeoff report over every evaluation.

Every stage writes its own directory under `out/`; `out/.stamps/<stage>.json` records the stage's
config and input hashes, so a re-run skips what is unchanged and a run stopped with Ctrl-C
continues (evaluations resume their `results.jsonl`). Verification failures do not stop the job:
they are reported, and the CLI exits with code 3 after the report is written.

    summary = run_pipeline(PipelineConfig(out="runs/main"))
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError, ParityError

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
    onnx_quants: tuple[str, ...] = option(
        ("fp32", "int8"), "ONNX variants (one directory; empty: no ONNX export)"
    )
    bnb_methods: tuple[str, ...] = option((), "bitsandbytes checkpoints (torch backend)")
    evaluate: tuple[str, ...] = option(
        EVALUATE,
        "artifacts evaluated, as backend/quant (each must be exported: torch/fp32 is the "
        "trained student itself); the first is the headline",
    )
    policies: tuple[str, ...] = option(
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
        "teacher's reviews; --fast: 64)",
    )
    threads: int = option(
        0, "CPU threads for llama.cpp and onnxruntime (0: all cores; 1 on a busy machine)"
    )

    def __post_init__(self) -> None:
        if self.n < 10:
            raise ConfigError(f"--n: {self.n} is too small for a train/held-out split; use >= 10")
        if min(self.eval_limit, self.torch_eval_limit) < -1:
            raise ConfigError("--eval-limit and --torch-eval-limit: must be >= -1")
        if self.max_new_tokens < 0 or self.train_steps < 0:
            raise ConfigError("--max-new-tokens and --train-steps: must be >= 0")
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


Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def run_pipeline(
    config: PipelineConfig, log: Log = lambda _: None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run (or continue) every stage; returns the summary written to `out/pipeline.json`.
    Exports that fail verification are listed in its `parity_failures` (see `check_parity`)."""
    from casseat_edge.artifacts import write_json_atomic
    from casseat_edge.pipeline_stages import STAGE_FUNCTIONS, Context

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    context = Context(config, out, log, progress or (lambda *_: None))
    stages: dict[str, Any] = {}
    for name in STAGES:
        start = time.perf_counter()
        log(f"[{name}] running")
        stages[name] = {
            **STAGE_FUNCTIONS[name](context),
            "seconds": round(time.perf_counter() - start, 2),
        }
    summary = {
        "out": str(out),
        "config": config.to_dict(),
        "stages": stages,
        "seconds": round(sum(s["seconds"] for s in stages.values()), 2),
        "headline": context.headline(),
        "parity_failures": context.parity_failures,
    }
    write_json_atomic(out / "pipeline.json", summary)
    return summary


def check_parity(summary: dict[str, Any]) -> None:
    """Raise `ParityError` (exit 3) when an export of the finished run failed verification."""
    if summary["parity_failures"]:
        raise ParityError(
            f"{summary['out']}: pipeline finished (report in {summary['out']}/report) but "
            "verification failed: " + "; ".join(summary["parity_failures"])
        )
