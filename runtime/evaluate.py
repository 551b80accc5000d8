"""`evaluate(config)`: run a model through a cascade policy on a problem set, one `results.jsonl`
row per problem (appended and flushed, so a killed run resumes where it stopped), then
`summary.json` (accuracy, verdict confusion, latency p50/p90, tokens/s, peak RSS, model bytes) and
`casseat.json`.

A problem that fails (a backend crash, an undecodable image) is recorded with its error and the
evaluation goes on; it counts as wrong.

    summary = evaluate(EvalConfig(model="runs/main/export/model-q4_k_m.gguf", bench="bench",
                                  out="runs/eval-llama-q4", backend="llama.cpp"))
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from casseat_edge.answers import is_correct
from casseat_edge.artifacts import (
    MANIFEST,
    JsonlAppender,
    read_jsonl,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError
from casseat_edge.loaders import load_problems
from casseat_edge.locks import DirectoryLock, is_empty
from casseat_edge.prompts import Policy, prompt_info
from runtime.config import CascadeConfig, backend_keywords, shared_option
from runtime.summary import summarize

RESULTS = "results.jsonl"
CAPTIONS = {"auto": None, "on": True, "off": False}
PROBLEM_FIELDS = ("pid", "answer", "answer_type", "choices", "precision", "unit", "question_type")


@dataclasses.dataclass(frozen=True)
class EvalConfig(StageConfig):
    """Config of the evaluation stage."""

    model: str = option(
        "embedded:smollm2-135m-instruct", "model spec (HF dir, .gguf, export dir, ...)"
    )
    bench: str = option(
        "", "problem set: a directory with problems.jsonl or an official dataset file"
    )
    out: str = option("eval", "output directory for results.jsonl, summary.json, casseat.json")
    backend: str = shared_option("backend")
    policy: Policy = shared_option("policy")
    split: str = option("test", "evaluate problems whose metadata.split is this ('' for all)")
    limit: int = option(0, "evaluate at most this many problems (0: all)")
    max_new_tokens: int = shared_option("max_new_tokens")
    quant: str = option(
        "",
        "the variant to load where an export holds several (ONNX: fp32|int8|int4), and the "
        "report's label (default: read from the model)",
    )
    captions: Literal["auto", "on", "off"] = option(
        "auto",
        "caption-augmented prompts for vision models (the caption after the image); auto: as "
        "the model was trained (its casseat.json)",
    )
    name: str = option("", "the model's name in reports (default: the model spec)")
    threads: int = shared_option("threads")
    draft_tokens: int = shared_option("draft_tokens")
    resume: bool = option(False, "continue an interrupted evaluation in --out")

    def __post_init__(self) -> None:
        if not self.bench:
            raise ConfigError("--bench: required; pass a directory with problems.jsonl")
        if self.limit < 0:
            raise ConfigError(f"--limit: expected >= 0, found {self.limit}")
        self.cascade_config()  # the cascade's fields are checked where every cascade's are

    def cascade_config(self) -> CascadeConfig:
        """The cascade this evaluation runs. `--quant` reaches the backends that load by it
        (onnxruntime's variants, vllm's quantization); for the others it is the report's label."""
        cascade = CascadeConfig(
            backend=self.backend,
            policy=self.policy,
            max_new_tokens=self.max_new_tokens,
            captions=CAPTIONS[self.captions],
            threads=self.threads,
            draft_tokens=self.draft_tokens,
        )
        if self.quant and "quant" in backend_keywords(self.backend):
            cascade = dataclasses.replace(cascade, quant=self.quant)
        return cascade


Progress = Callable[[int, int], None]


def evaluate(config: EvalConfig, progress: Progress | None = None) -> dict[str, Any]:
    from runtime import Cascade

    problems = load_problems(config.bench)
    rows = [
        r
        for r in problems.rows
        if not config.split or r["metadata"].get("split") in (None, config.split)
    ]
    rows = rows[: config.limit] if config.limit else rows
    if not rows:
        raise ConfigError(f"--bench {config.bench}: no problems in split {config.split!r}")
    out = Path(config.out)
    with DirectoryLock(out):
        _prepare(out, config)
        cascade = Cascade(config.model, config.cascade_config())
        manifest = (config.to_dict(), {"bench": problems.source})
        write_manifest(out, "eval", *manifest, status="running", **prompt_info())
        with cascade, JsonlAppender(out / RESULTS) as writer:
            done = {row["pid"] for _, row in read_jsonl(out / RESULTS) if not row.get("error")}
            pending = [r for r in rows if r["pid"] not in done]
            for count, problem in enumerate(pending, len(rows) - len(pending) + 1):
                writer.write(_solve(cascade, problem, problems.image_path(problem), config))
                if progress:
                    progress(count, len(rows))
            run = _run_facts(config, cascade)
        results = list({r["pid"]: r for _, r in read_jsonl(out / RESULTS)}.values())
        summary = summarize(results, {p["pid"]: p for p in rows}, run)
        write_json_atomic(out / "summary.json", summary)
        write_manifest(out, "eval", *manifest, status="done", **prompt_info())
    return summary


# what makes two evaluations the same run: --resume must not mix rows of different ones
IDENTITY = ("model", "bench", "backend", "policy", "split", "max_new_tokens", "quant", "captions")


def _prepare(out: Path, config: EvalConfig) -> None:
    """An empty --out, or with --resume one holding this same run (its manifest says so)."""
    if is_empty(out):
        return
    if not config.resume:
        raise ConfigError(
            f"{out} already exists and is not empty; pass --resume or choose another --out"
        )
    if not (out / MANIFEST).is_file():
        raise ConfigError(
            f"--resume: {out} has no {MANIFEST}, so which run wrote it is unknown; choose "
            "another --out"
        )
    previous = read_manifest(out, "eval")
    before, now = previous.get("config", {}), config.to_dict()
    changed = [
        f"--{k.replace('_', '-')} {before.get(k)!r} (now {now[k]!r})"
        for k in IDENTITY
        if _same(k, before.get(k)) != _same(k, now[k])
    ]
    if previous.get("prompt_hash") != prompt_info()["prompt_hash"]:
        changed.append(
            f"prompts {previous.get('prompt_hash')!r} (now {prompt_info()['prompt_hash']!r})"
        )
    if changed:
        raise ConfigError(
            f"--resume: {out} holds another evaluation ({'; '.join(changed)}); resume it with "
            "its own flags or choose another --out"
        )


def _same(key: str, value: Any) -> Any:
    """Paths compare resolved (`bench` and `./bench` are one run)."""
    if key in ("model", "bench") and isinstance(value, str) and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _solve(
    cascade: Any, problem: dict[str, Any], image: Path | None, config: EvalConfig
) -> dict[str, Any]:
    fields = {k: problem.get(k) for k in PROBLEM_FIELDS}
    fields["caption"] = problem["metadata"].get("caption")
    start = time.perf_counter()
    try:
        row = cascade.solve(image, problem["question"], **fields).to_dict()
    except Exception as exc:  # noqa: BLE001 - one failing problem must not end the evaluation
        row = {
            "policy": config.policy,
            "backend": config.backend,
            "answer": None,
            "correct": False,
            "verdict": None,
            "stages": [],
            "error": f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500],
        }
    row.update(pid=problem["pid"], wall_ms=round((time.perf_counter() - start) * 1e3, 3))
    return row


DEFAULT_QUANT = {"torch": "fp32", "llama.cpp": "gguf", "vllm": "checkpoint"}  # vllm: its own dtype


RUN_FACTS = ("model", "name", "backend", "quant", "captions", "model_bytes", "peak_rss_bytes")


def _run_facts(config: EvalConfig, cascade: Any) -> dict[str, Any]:
    return {
        "model": config.model,
        "name": config.name or config.model,
        "backend": config.backend,
        "policy": config.policy,
        "quant": config.quant or DEFAULT_QUANT.get(config.backend, "unknown"),
        "captions": cascade.captions,
        "model_bytes": cascade.engine.model_bytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


CASCADES = ("cas-seat", "cas-seat-refine")


def derive_cot(source: str | Path, out: str | Path) -> dict[str, Any]:
    """The `cot` evaluation of a model read off its `cas-seat` evaluation in `source`, with no
    generation: `cot` is exactly a cascade's stage 1 (the same `stage1_messages`, decoded greedily
    from an empty cache), so its tokens, answer and latency are stage 1's. (With speculative
    decoding a separate cot run would draft from its own earlier replies, whose batch arithmetic
    can flip a near tie: the same as any change of kernel.) Rows keep stage 1 only
    and carry `derived_from`; the summary too. `tests/test_eval.py` checks a derived run against
    a generated one. The pipeline uses it to halve the cost of evaluating both policies."""
    source, out = Path(source), Path(out)
    manifest = read_manifest(source, "eval")
    config = {**manifest["config"], "policy": "cot", "out": str(out), "resume": False}
    if manifest["config"].get("policy") not in CASCADES:
        raise ConfigError(
            f"{source}: a {manifest['config'].get('policy')!r} evaluation has no stage 1 to "
            f"derive cot from; derive from a {' or '.join(CASCADES)} evaluation"
        )
    problems = {p["pid"]: p for p in load_problems(config["bench"]).rows}
    rows = [
        _stage1_row(r, problems.get(r["pid"]), str(source)) for _, r in read_jsonl(source / RESULTS)
    ]
    previous = json.loads((source / "summary.json").read_text())
    run = {k: previous.get(k) for k in RUN_FACTS}
    summary = summarize(rows, problems, {**run, "policy": "cot", "derived_from": str(source)})
    extra = {k: v for k, v in manifest.items() if k.startswith("prompt_")}
    with DirectoryLock(out):
        if not is_empty(out):
            raise ConfigError(f"{out} already exists and is not empty; choose another --out")
        with JsonlAppender(out / RESULTS) as writer:
            for row in rows:
                writer.write(row)
        write_json_atomic(out / "summary.json", summary)
        write_manifest(
            out, "eval", config, manifest.get("inputs"), derived_from=str(source), **extra
        )
    return summary


def _stage1_row(row: dict[str, Any], problem: dict[str, Any] | None, source: str) -> dict[str, Any]:
    stages = row.get("stages", [])[:1]
    if not stages:  # the problem failed before stage 1 ended (its error is kept)
        return {**row, "policy": "cot", "derived_from": source}
    first = stages[0]
    answer = first.get("answer")
    known = problem is not None and problem.get("answer") is not None
    return {
        **{k: v for k, v in row.items() if k != "error"},
        "policy": "cot",
        "stages": stages,
        "answer": answer,
        "answer_source": "stage1",
        "verdict": None,
        "correct": is_correct(answer, problem) if known else None,
        "wall_ms": first.get("total_ms"),
        "derived_from": source,
    }
