"""The stages of `casseat-edge pipeline` (see `casseat_cli.pipeline` for the order and contract).

Each stage calls the stage package's library entry point (`make_bench`, `synthesize`,
`train_student`, the exporters, `quantize`, `evaluate`, `write_report`) with a config built from
the pipeline's; nothing here reaches into a stage's internals. `Context.stamped` is the skip /
resume rule every new stage shares: a stamp file holds the stage's config and input hashes; the
same stamp marked done skips the stage, the same stamp not yet done resumes it, and a different
one starts the stage's directory afresh.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_cli.pipeline_config import STUDENTS, Log, PipelineConfig, Progress
from casseat_edge.artifacts import read_manifest, sha256_file, sha256_json, write_json_atomic
from casseat_edge.errors import CasseatError, ParityError

STAMPS = ".stamps"
MAIN_STUDENT = "cas-seat"
ABLATION_POLICIES = ("cot", "cas-seat", "seat")


@dataclasses.dataclass
class Artifact:
    """One deployable form of a student (the main one: evaluated with every policy)."""

    student: str  # a key of STUDENTS
    backend: str
    quant: str
    model: str  # a model spec the backend loads
    source: Path  # the file or directory whose hash stands for it

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.quant}"


@dataclasses.dataclass
class Context:
    config: PipelineConfig
    out: Path
    log: Log
    progress: Progress
    parity_failures: list[str] = dataclasses.field(default_factory=list)
    parity: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    students: dict[str, Path] = dataclasses.field(default_factory=dict)
    artifacts: list[Artifact] = dataclasses.field(default_factory=list)
    runs: dict[str, Path] = dataclasses.field(default_factory=dict)

    def stamped(self, key: str, path: Path, stamp: dict[str, Any], work: Callable[[bool], Any]):
        """Run `work(resume)` for the output directory `path` unless the stamp says it is done."""
        stamp_file = self.out / STAMPS / f"{key}.json"
        previous = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
        if previous and previous["stamp"] == stamp and previous["done"] and path.exists():
            self.log(f"  {key}: unchanged, skipped")
            return previous["result"], "skipped"
        resume = bool(previous and previous["stamp"] == stamp and path.exists())
        if not resume and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        write_json_atomic(stamp_file, {"stamp": stamp, "done": False})
        result = work(resume)
        write_json_atomic(stamp_file, {"stamp": stamp, "done": True, "result": result})
        return result, "resumed" if resume else "done"

    def headline(self) -> dict[str, Any]:
        """Held-out accuracy of the main student per policy on the headline artifact (the first
        of --evaluate)."""
        label = self.config.evaluate[0]
        backend, quant = label.split("/", 1)
        accuracy, n = {}, None
        for policy in self.config.policies:
            run = self.runs.get(_run_name(MAIN_STUDENT, backend, quant, policy))
            if run and (run / "summary.json").is_file():
                summary = json.loads((run / "summary.json").read_text())
                accuracy[policy], n = summary["accuracy"], summary["n"]
        headline: dict[str, Any] = {"reference": label, "n": n, "accuracy": accuracy}
        if "cot" in accuracy and "cas-seat" in accuracy:
            headline["cas_seat_minus_cot_points"] = round(
                100 * (accuracy["cas-seat"] - accuracy["cot"]), 1
            )
        return headline


# ------------------------------------------------------------------ bench, model, synth
def bench_stage(ctx: Context) -> dict[str, Any]:
    from casseat_edge.bench import BenchConfig, make_bench

    config = ctx.config
    bench = BenchConfig(
        out=str(ctx.out / "bench"), n=config.bench_size, seed=config.seed, overwrite=True
    )
    if _manifest_matches(Path(bench.out), bench.to_dict()):
        ctx.log("  bench: unchanged, skipped")
        return {"status": "skipped", "path": bench.out}
    summary = make_bench(bench)
    return {
        "status": "done",
        "path": bench.out,
        "n": summary["n"],
        "splits": summary["counts"]["split"],
    }


def model_stage(ctx: Context) -> dict[str, Any]:
    """The packaged SmolLM2's tokenizer is the real teacher's and the student's source: check it."""
    from casseat_edge.models import embedded_gguf, embedded_tokenizer_dir, resolve_model

    spec = ctx.config.real_teacher
    if spec.startswith("embedded:"):  # the tokenizer alone: no need to build the HF model
        name = spec.split(":", 1)[1]
        tokenizer, gguf = embedded_tokenizer_dir(name), embedded_gguf(name)
    else:
        ref = resolve_model(spec)
        tokenizer, gguf = ref.path, ref.gguf
    result: dict[str, Any] = {"status": "done", "spec": spec, "gguf": str(gguf)}
    if gguf is not None:
        result["tokenizer_parity"] = check_tokenizer_parity(tokenizer, gguf, _problems(ctx))
        ctx.log(f"  tokenizer ids equal llama.cpp's on {result['tokenizer_parity']['texts']} texts")
    return result


def synth_stage(ctx: Context) -> dict[str, Any]:
    from training.synth import SynthConfig, synthesize
    from training.synth.run import run_settings

    config = ctx.config
    common = {"problems": str(ctx.out / "bench"), "seed": config.seed, "resume": True}
    variant = {"cas-seat": {}, "cot": {"eval_fraction": 0.0}, "seat": {"mode": "seat"}}
    runs = {
        name: SynthConfig(
            teacher="procedural",
            out=str(_synth_dir(ctx, name)),
            wording="plain",
            **variant[name],
            **common,
        )
        for name in _students(config)
    }
    runs["real"] = SynthConfig(
        teacher=config.real_teacher,
        out=str(ctx.out / "synth-real"),
        limit=min(config.real_teacher_problems, 3) if config.fast else config.real_teacher_problems,
        max_new_tokens=192,
        threads=config.threads,
        **common,
    )
    result: dict[str, Any] = {}
    for name, synth in runs.items():
        settings = run_settings(synth)
        inputs = {"problems": settings["problems_sha256"]}
        if _manifest_matches(Path(synth.out), synth.to_dict(), inputs):
            ctx.log(f"  synth {name}: unchanged, skipped")
            result[name] = {"status": "skipped", "path": synth.out}
            continue
        _drop_stale_run(Path(synth.out), settings)
        stats = synthesize(synth)
        result[name] = {key: stats[key] for key in ("teacher", "problems", "samples", "keep_rate")}
        result[name]["tokens_per_s"] = stats["throughput"]["tokens_per_s"]
        ctx.log(f"  synth {name}: keep rate {stats['keep_rate']}")
    return {"status": _overall(result), **result}


# ------------------------------------------------------------------ train
def train_stage(ctx: Context) -> dict[str, Any]:
    from training.sft.student import StudentConfig, train_student

    config = ctx.config
    result: dict[str, Any] = {}
    for name in _students(config):
        path = ctx.out / ("student" if name == MAIN_STUDENT else f"student-{STUDENTS[name]}")
        data = [_synth_dir(ctx, name)] + ([ctx.out / "synth-real"] if name == MAIN_STUDENT else [])
        student = StudentConfig.for_preset(
            config.preset,
            data=tuple(str(d) for d in data),
            bench=str(ctx.out / "bench"),
            out=str(path),
            seed=config.seed,
            **config.student_budget,
            overwrite=True,
        )
        inputs = {str(d): sha256_file(d / "samples.jsonl") for d in data}
        inputs["problems"] = sha256_file(_problems(ctx))

        def work(resume: bool, student: Any = student, name: str = name) -> dict[str, Any]:
            summary = train_student(
                student,
                progress=lambda done, total, name=name: ctx.progress(f"train {name}", done, total),
            )
            mix = summary["mix"]
            return {
                "steps": mix["steps"],
                "final_loss": mix["final_loss"],
                "seconds": summary["seconds"],
                "tokens_per_s": mix["tokens_per_s"],
                "allocator": mix["allocator"],
                "caption_accuracy": (summary.get("warmup") or {}).get("caption_accuracy"),
            }

        stats, status = ctx.stamped(
            f"train-{name}", path, {"config": student.to_dict(), "inputs": inputs}, work
        )
        ctx.students[name] = path
        result[name] = {"status": status, "path": str(path), **stats}
    return {"status": _overall(result), **result}


# ------------------------------------------------------------------ export
def export_stage(ctx: Context) -> dict[str, Any]:
    """Every export of the main student; an ablation student gets the headline artifact only
    (the one its policies are compared on)."""
    config = ctx.config
    result = _export_student(ctx, MAIN_STUDENT, config.exported)
    for name in ctx.students:
        if name != MAIN_STUDENT:
            result.update(_export_student(ctx, name, [config.evaluate[0]]))
    return result


def _export_student(ctx: Context, name: str, labels: list[str]) -> dict[str, Any]:
    from casseat_edge.registry import EXPORTERS
    from export.gguf.config import FLOAT_QUANTS

    student = ctx.students[name]
    weights = {"student": _weights_hash(student)}
    root = ctx.out / "export" / ("" if name == MAIN_STUDENT else f"{STUDENTS[name]}-student")
    prefix = "" if name == MAIN_STUDENT else f"{STUDENTS[name]}-student-"
    wanted = {tuple(label.split("/", 1)) for label in labels}
    result: dict[str, Any] = {}
    if ("torch", "fp32") in wanted:
        ctx.artifacts.append(Artifact(name, "torch", "fp32", str(student), student))
    gguf, bnb = EXPORTERS.get("gguf"), EXPORTERS.get("bnb")
    for quant in (q for b, q in sorted(wanted) if b == "llama.cpp"):
        path, key = root / f"gguf-{quant}", f"{prefix}gguf-{quant}"
        calibrate = ctx.config.gptq_samples > 0 and quant not in FLOAT_QUANTS
        cfg = gguf.config_class(
            model=str(student),
            out=str(path),
            quant=quant,
            overwrite=True,
            gptq=str(_synth_dir(ctx, name)) if calibrate else "",
            calibration_samples=ctx.config.gptq_samples,
        )
        summary = _export(ctx, key, path, cfg, weights, gguf.export)
        text = next(f["file"] for f in summary["files"] if f.get("role", "text") == "text")
        ctx.artifacts.append(Artifact(name, "llama.cpp", quant, str(path / text), path))
        result[key] = _export_rows(key, summary)
    onnx_quants = tuple(q for b, q in sorted(wanted) if b == "onnxruntime")
    if onnx_quants:  # one directory holds every variant; the backend picks one
        onnx, path, key = EXPORTERS.get("onnx"), root / "onnx", f"{prefix}onnx"
        cfg = onnx.config_class(
            model=str(student), out=str(path), quant=onnx_quants, overwrite=True
        )
        summary = _export(ctx, key, path, cfg, weights, onnx.export)
        for quant in onnx_quants:
            ctx.artifacts.append(Artifact(name, "onnxruntime", quant, str(path), path))
        result[key] = _export_rows(key, summary)
    for method in (q for b, q in sorted(wanted) if b == "torch" and q != "fp32"):
        path, key = root / method, f"{prefix}{method}"
        cfg = bnb.config_class(model=str(student), method=method, out=str(path), overwrite=True)
        summary = _export(ctx, key, path, cfg, weights, bnb.export)
        ctx.artifacts.append(Artifact(name, "torch", method, str(path), path))
        result[key] = _export_rows(key, summary)
    return result


def _export(
    ctx: Context, key: str, path: Path, cfg: Any, weights: dict[str, str], run: Callable
) -> dict[str, Any]:
    """Run one exporter; a verification failure is recorded (the artifact is still evaluated)."""

    def work(resume: bool) -> dict[str, Any]:
        try:
            return run(cfg)
        except ParityError as exc:
            return {**read_manifest(path), "out": str(path), "parity_error": str(exc)}

    summary, status = ctx.stamped(
        f"export-{key}", path, {"config": cfg.to_dict(), "inputs": weights}, work
    )
    if summary.get("parity_error"):
        ctx.parity_failures.append(f"{key}: {summary['parity_error']}")
    ctx.parity += _export_rows(key, summary)
    ctx.log(f"  {key}: {status}{' (verification FAILED)' if summary.get('parity_error') else ''}")
    return summary


def _export_rows(key: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per deployable variant: size, bits/weight, logit parity, verified or not."""
    checks = summary.get("parity") or []
    if summary.get("variants"):  # ONNX: several variants in one directory
        parts = [(f"{key}-{v['quant']}", v["quant"], v["size_mb"], v["bits_per_weight"])
                 for v in summary["variants"]]  # fmt: skip
    elif summary.get("format") == "gguf":
        text = next(f for f in summary["files"] if f.get("role") == "text")
        size = sum(f["size_mb"] for f in summary["files"])
        parts = [(key, text["type"], size, text["bits_per_weight"])]
    else:
        parts = [
            (key, summary.get("method"), summary.get("size_mb"), summary.get("bits_per_weight"))
        ]
    rows = []
    for name, quant, size, bits in parts:
        own = [c for c in checks if c.get("type") in (None, quant)]
        logits = next((c for c in own if c.get("check") == "logits"), {})
        rows.append(
            {
                "artifact": name,
                "mb": round(size, 2) if size is not None else None,
                "bits_per_weight": bits,
                "top1": logits.get("top1"),
                "kl": logits.get("kl"),
                "verified": bool(own) and all(c.get("passed") for c in own),
                "checks": [c.get("check") for c in own],
                "failed": [c.get("check") for c in own if not c.get("passed")],
                # GGUF tensors GPTQ re-rounded (None: llama.cpp's rounding only)
                "gptq_tensors": (summary.get("gptq") or {}).get("tensors"),
            }
        )
    return rows


# ------------------------------------------------------------------ eval, report
def eval_stage(ctx: Context) -> dict[str, Any]:
    """Every planned evaluation; a `cot` run whose artifact also has a cascade run is read off
    that run's stage 1 (`derive_cot`: the same prompt and greedy tokens) instead of generated."""
    from runtime.evaluate import EvalConfig, derive_cot, evaluate

    config = ctx.config
    result: dict[str, Any] = {}
    plan = _evaluations(ctx)
    for name, art, policy in sorted(plan, key=lambda item: item[2] == "cot"):
        run = _run_name(name, art.backend, art.quant, policy)
        limit = config.held_out_limit(art.label)
        path = ctx.out / "eval" / run
        eval_config = EvalConfig(
            model=art.model,
            bench=str(ctx.out / "bench"),
            out=str(path),
            backend=art.backend,
            policy=policy,
            limit=limit,
            max_new_tokens=config.generation_budget_for(policy),
            quant=art.quant,
            name=f"{STUDENTS[name]} student",
            threads=config.threads,
            draft_tokens=config.draft_tokens,
        )
        inputs = {"model": _artifact_hash(art.source), "problems": sha256_file(_problems(ctx))}
        source = _cot_source(ctx, plan, name, art) if policy == "cot" else None
        if source is not None:
            inputs["derived_from"] = sha256_file(source / "results.jsonl")

        def work(
            resume: bool, cfg: Any = eval_config, run: str = run, source: Path | None = source
        ) -> dict[str, Any]:
            if source is not None:
                summary = derive_cot(source, cfg.out)
            else:
                summary = evaluate(
                    dataclasses.replace(cfg, resume=resume),
                    progress=lambda done, total: ctx.progress(f"eval {run}", done, total),
                )
            return {k: summary.get(k) for k in ("accuracy", "correct", "n")}

        stats, status = ctx.stamped(
            f"eval-{run}", path, {"config": eval_config.to_dict(), "inputs": inputs}, work
        )
        ctx.runs[run] = path
        result[run] = {"status": status, **stats}
        how = f", read off {source.name}'s stage 1" if source is not None else ""
        ctx.log(f"  {run}: accuracy {stats['accuracy']:.3f} ({stats['correct']}/{stats['n']}{how})")
    return {"status": _overall(result), **result}


def _cot_source(ctx: Context, plan: list, name: str, art: Artifact) -> Path | None:
    """The cas-seat run of the same student and artifact, if planned (it runs first)."""
    if (name, art, "cas-seat") not in plan:
        return None
    return ctx.runs[_run_name(name, art.backend, art.quant, "cas-seat")]


def report_stage(ctx: Context) -> dict[str, Any]:
    from runtime.report import write_report

    runs = sorted(ctx.runs.values())
    inputs = {str(p): sha256_file(p / "summary.json") for p in runs}
    sections = {"Exports (verified against the trained student)": _parity_table(ctx.parity)}
    if ctx.config.ablation:
        sections[
            f"Ablation: students with the same budget ({ctx.config.evaluate[0]}, held-out)"
        ] = _ablation_table(ctx)

    def work(resume: bool) -> dict[str, Any]:
        document = write_report(runs, ctx.out / "report", sections=sections)
        return {"pareto_front": document["pareto_front"], "path": str(ctx.out / "report")}

    stats, status = ctx.stamped(
        "report", ctx.out / "report", {"inputs": inputs, "sections": sections}, work
    )
    return {"status": status, **stats}


def _ablation_table(ctx: Context) -> str:
    policies = ABLATION_POLICIES
    backend, quant = ctx.config.evaluate[0].split("/", 1)
    lines = ["| student | " + " | ".join(policies) + " |", "|---" * (len(policies) + 1) + "|"]
    for name in ctx.students:
        cells = []
        for policy in policies:
            path = ctx.runs.get(_run_name(name, backend, quant, policy))
            summary = json.loads((path / "summary.json").read_text()) if path else None
            cells.append(f"{summary['accuracy']:.3f}" if summary else "")
        lines.append(f"| {STUDENTS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parity_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| artifact | MB | bits/weight | top-1 | KL | verified | checks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "yes" if r["verified"] else "FAILED: " + ", ".join(r["failed"] or ["no checks"])
        lines.append(
            f"| {r['artifact']} | {r['mb']} | {r['bits_per_weight']} | {r['top1']} | {r['kl']} | "
            f"{verdict} | {', '.join(r['checks'])} |"
        )
    return "\n".join(lines)


STAGE_FUNCTIONS = {
    "bench": bench_stage,
    "model": model_stage,
    "synth": synth_stage,
    "train": train_stage,
    "export": export_stage,
    "eval": eval_stage,
    "report": report_stage,
}


# ------------------------------------------------------------------ helpers
def _evaluations(ctx: Context) -> list[tuple[str, Artifact, str]]:
    """The main student's artifacts named by --evaluate x --policies; with --ablation, every
    student's headline artifact (the first of --evaluate) with cot, cas-seat and seat."""
    config = ctx.config
    plan = [(a.student, a, p) for a in ctx.artifacts if a.student == MAIN_STUDENT
            and a.label in config.evaluate for p in config.policies]  # fmt: skip
    if config.ablation:
        done = {(n, a.label, p) for n, a, p in plan}
        for art in ctx.artifacts:
            if art.label == config.evaluate[0]:
                plan += [(art.student, art, p) for p in ABLATION_POLICIES
                         if (art.student, art.label, p) not in done]  # fmt: skip
    return plan


def _run_name(student: str, backend: str, quant: str, policy: str) -> str:
    prefix = "" if student == MAIN_STUDENT else f"{STUDENTS[student]}-student-"
    return f"{prefix}{backend}-{quant}-{policy}"


def _overall(parts: dict[str, dict[str, Any]]) -> str:
    return "skipped" if all(p.get("status") == "skipped" for p in parts.values()) else "done"


def _students(config: PipelineConfig) -> list[str]:
    return list(STUDENTS) if config.ablation else [MAIN_STUDENT]


def _synth_dir(ctx: Context, student: str) -> Path:
    return ctx.out / ("synth" if student == MAIN_STUDENT else f"synth-{STUDENTS[student]}")


def _problems(ctx: Context) -> Path:
    return ctx.out / "bench" / "problems.jsonl"


def _weights_hash(model_dir: Path) -> str:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CasseatError(f"{model_dir}: no *.safetensors weights; re-run the train stage")
    return sha256_json({f.name: sha256_file(f) for f in files})


WEIGHT_SUFFIXES = {".safetensors", ".onnx", ".onnx_data", ".data", ".gguf"}


def _artifact_hash(source: Path) -> str:
    """The weights' hash: a file itself, or a directory's weight files (not its checkpoints/)."""
    if source.is_file():
        return sha256_file(source)
    files = [f for f in sorted(source.rglob("*")) if f.suffix in WEIGHT_SUFFIXES
             and "checkpoints" not in f.relative_to(source).parts]  # fmt: skip
    return sha256_json({str(f.relative_to(source)): sha256_file(f) for f in files})


def check_tokenizer_parity(tokenizer_dir: Path, gguf: Path, problems_path: Path) -> dict[str, Any]:
    """Our HF tokenizer vs llama.cpp's on every question and caption; any difference is a ParityError."""
    try:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:
        raise CasseatError(
            "the tokenizer check needs llama-cpp-python; run scripts/setup.sh (extra: llama)"
        ) from None
    from transformers import AutoTokenizer

    from casseat_edge.artifacts import read_jsonl

    ours = AutoTokenizer.from_pretrained(tokenizer_dir)
    # the vocabulary alone: a Llama object would also make a context (and warn about its size)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with suppress_stdout_stderr(disable=False):
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise CasseatError(f"{gguf}: llama.cpp could not read its vocabulary")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        texts = [t for _, row in read_jsonl(problems_path) for t in _texts(row)]
        for text in texts:
            data = text.encode()
            ids = (llama_cpp.llama_token * (len(data) + 8))()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), ids, len(ids), False, True)
            if ours(text, add_special_tokens=False).input_ids != list(ids[: max(n, 0)]):
                raise ParityError(f"{tokenizer_dir}: ids differ from llama.cpp's on {text[:60]!r}")
    finally:
        llama_cpp.llama_model_free(model)
    return {"texts": len(texts), "mismatches": 0}


def _texts(row: dict[str, Any]) -> list[str]:
    return [row["question"], row["metadata"].get("caption", ""), *(row.get("choices") or [])]


def _drop_stale_run(path: Path, settings: dict[str, Any]) -> None:
    """An interrupted synthesis over other inputs cannot be resumed: start it afresh."""
    run_file = path / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()) != settings:
        shutil.rmtree(path)


def _manifest_matches(path: Path, config: dict[str, Any], inputs: dict[str, str] | None = None):
    """True when the stage's own manifest records this config (and these input hashes)."""
    try:
        manifest = read_manifest(path)
    except CasseatError:
        return False
    return manifest["config"] == config and (inputs is None or manifest["inputs"] == inputs)
