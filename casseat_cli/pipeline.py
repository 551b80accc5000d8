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

import time
from pathlib import Path
from typing import Any

from casseat_cli.pipeline_config import STAGES, Log, PipelineConfig, Progress
from casseat_cli.pipeline_stages import STAGE_FUNCTIONS, Context
from casseat_edge.artifacts import write_json_atomic
from casseat_edge.errors import ParityError

__all__ = ["PipelineConfig", "check_parity", "run_pipeline"]


def run_pipeline(
    config: PipelineConfig, log: Log = lambda _: None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run (or continue) every stage; returns the summary written to `out/pipeline.json`.
    Exports that fail verification are listed in its `parity_failures` (see `check_parity`)."""
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
