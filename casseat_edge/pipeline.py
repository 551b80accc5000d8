"""The main job, `casseat-edge pipeline`: every stage in order on the embedded default, offline.

Each stage writes its own artifact directory under `out/` with a manifest, and is skipped on a
re-run when its manifest records the same inputs. The stages that exist so far:

1. `bench`  - the synthetic benchmark with its train / held-out split;
2. `model`  - the embedded SmolLM2 materialized as an HF directory, its tokenizer checked against
              llama.cpp's on every benchmark question (the student's text model must tokenize
              exactly as the deployed GGUF does);
3. `synth`  - Cas-SEAT data from the procedural teacher on the train split, and a small slice from
              the real packaged SmolLM2 teacher (llama.cpp), both through DDF.

Training, export, evaluation and the report are appended by the issues that build them;
`pipeline.json` lists what ran and what is still to come.

    summary = run_pipeline(PipelineConfig(out="runs/main"))
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import read_manifest, write_json_atomic
from casseat_edge.config import StageConfig, option
from casseat_edge.errors import CasseatError, ConfigError, ParityError

PENDING_STAGES = {
    "train": "student fine-tuning (issue 4)",
    "export": "GGUF / ONNX / bitsandbytes artifacts (issue 5)",
    "eval": "cascaded evaluation on every backend x quant (issues 6, 7)",
    "report": "latency/accuracy tradeoff report (issue 7)",
}


@dataclasses.dataclass(frozen=True)
class PipelineConfig(StageConfig):
    """Config of the main job."""

    out: str = option("runs/main", "output directory; each stage writes a subdirectory")
    fast: bool = option(False, "a small end-to-end run (CI-sized) instead of the full one")
    seed: int = option(7, "seed for the benchmark and every later stage")
    n: int = option(1000, "benchmark size (the --fast run uses 120)")
    model: str = option("embedded:smollm2-135m-instruct", "the student's base model spec")
    real_teacher: str = option(
        "embedded:smollm2-135m-instruct", "the real teacher of the small slice"
    )
    real_teacher_problems: int = option(10, "problems for the real-teacher slice (--fast: 3)")

    def __post_init__(self) -> None:
        if self.n < 10:
            raise ConfigError(f"--n: {self.n} is too small for a train/held-out split; use >= 10")

    @property
    def bench_size(self) -> int:
        return min(self.n, 120) if self.fast else self.n


Log = Callable[[str], None]


def run_pipeline(config: PipelineConfig, log: Log = lambda _: None) -> dict[str, Any]:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Any] = {}
    for name, stage in (("bench", _bench_stage), ("model", _model_stage), ("synth", _synth_stage)):
        start = time.perf_counter()
        log(f"[{name}] running")
        stages[name] = {**stage(config, out, log), "seconds": round(time.perf_counter() - start, 2)}
    summary = {
        "out": str(out),
        "config": config.to_dict(),
        "stages": stages,
        "pending": PENDING_STAGES,
    }
    write_json_atomic(out / "pipeline.json", summary)
    return summary


def _bench_stage(config: PipelineConfig, out: Path, log: Log) -> dict[str, Any]:
    from casseat_edge.bench import BenchConfig, make_bench

    bench = BenchConfig(
        out=str(out / "bench"), n=config.bench_size, seed=config.seed, overwrite=True
    )
    if _same_config(out / "bench", bench.to_dict()):
        log("[bench] unchanged, skipped")
        return {"status": "skipped", "path": bench.out}
    summary = make_bench(bench)
    return {
        "status": "done",
        "path": bench.out,
        "n": summary["n"],
        "splits": summary["counts"]["split"],
    }


def _model_stage(config: PipelineConfig, out: Path, log: Log) -> dict[str, Any]:
    from casseat_edge.models import resolve_model

    ref = resolve_model(config.model)
    result: dict[str, Any] = {"status": "done", **ref.describe()}
    if ref.gguf is not None:
        result["tokenizer_parity"] = check_tokenizer_parity(ref, out / "bench" / "problems.jsonl")
        log(
            f"[model] tokenizer ids equal llama.cpp's on {result['tokenizer_parity']['texts']} texts"
        )
    return result


def _synth_stage(config: PipelineConfig, out: Path, log: Log) -> dict[str, Any]:
    from training.synth import SynthConfig, synthesize
    from training.synth.run import run_settings

    slice_n = min(config.real_teacher_problems, 3) if config.fast else config.real_teacher_problems
    runs = {
        "procedural": SynthConfig(
            problems=str(out / "bench"),
            teacher="procedural",
            out=str(out / "synth"),
            seed=config.seed,
            resume=True,
        ),
        "real": SynthConfig(
            problems=str(out / "bench"),
            teacher=config.real_teacher,
            out=str(out / "synth-real"),
            seed=config.seed,
            limit=slice_n,
            max_new_tokens=192,
            resume=True,
        ),
    }
    result: dict[str, Any] = {"status": "done"}
    for name, synth in runs.items():
        settings = run_settings(synth)
        if _same_config(
            Path(synth.out), synth.to_dict(), {"problems": settings["problems_sha256"]}
        ):
            log(f"[synth] {name}: unchanged, skipped")
            result[name] = {"status": "skipped", "path": synth.out}
            continue
        _drop_stale_run(Path(synth.out), settings)
        stats = synthesize(synth)
        result[name] = {key: stats[key] for key in ("teacher", "problems", "samples", "keep_rate")}
        result[name]["tokens_per_s"] = stats["throughput"]["tokens_per_s"]
        log(f"[synth] {name}: keep rate {stats['keep_rate']}")
    return result


def check_tokenizer_parity(ref: Any, problems_path: Path) -> dict[str, Any]:
    """Our HF tokenizer vs llama.cpp's on every question and caption; any difference is a ParityError."""
    try:
        import llama_cpp
    except ImportError:
        raise CasseatError(
            "the tokenizer check needs llama-cpp-python; run scripts/setup.sh (extra: llama)"
        ) from None
    from transformers import AutoTokenizer

    from casseat_edge.artifacts import read_jsonl

    ours = AutoTokenizer.from_pretrained(ref.path)
    reference = llama_cpp.Llama(str(ref.gguf), vocab_only=True, verbose=False)
    texts = [t for _, row in read_jsonl(problems_path) for t in _texts(row)]
    for text in texts:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        if ours(text, add_special_tokens=False).input_ids != expected:
            raise ParityError(f"{ref.path}: tokenizer ids differ from llama.cpp's on {text[:60]!r}")
    return {"texts": len(texts), "mismatches": 0}


def _texts(row: dict[str, Any]) -> list[str]:
    return [row["question"], row["metadata"].get("caption", ""), *(row.get("choices") or [])]


def _drop_stale_run(path: Path, settings: dict[str, Any]) -> None:
    """An interrupted run over other inputs cannot be resumed: start that stage afresh."""
    run_file = path / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()) != settings:
        shutil.rmtree(path)


def _same_config(path: Path, config: dict[str, Any], inputs: dict[str, str] | None = None) -> bool:
    """True when the stage's manifest records this config (and these input hashes)."""
    try:
        manifest = read_manifest(path)
    except CasseatError:
        return False
    return manifest["config"] == config and (inputs is None or manifest["inputs"] == inputs)
