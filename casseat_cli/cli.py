"""The `casseat-edge` command. Thin by design: each command parses flags, builds its stage config,
calls one library function and renders the result (human text on stdout, or exactly one JSON
document with `--json`). Logs and progress go to stderr and stay quiet under `--json`/`--quiet`
or when stderr is not a terminal.

Exit codes: 0 ok; 1 runtime error (one line, no traceback unless `--debug`); 2 usage error;
3 artifact written but verification failed.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from casseat_edge import __version__
from casseat_edge.config import cli_overrides, click_options, load_config
from casseat_edge.errors import CasseatError

STAGE_PACKAGES = ("training", "quantize", "export", "runtime")


class Group(click.Group):
    """Turns `CasseatError` into one `error:` line on stderr and its exit code (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CasseatError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(getattr(exc, "exit_code", 1))


def _one_line(exc: Exception) -> str:
    """CasseatErrors are written as one line; an OSError becomes `PATH: reason`."""
    if isinstance(exc, OSError) and not isinstance(exc, CasseatError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="casseat-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines on stderr.")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Cas-SEAT for small vision-language models: make benchmarks, synthesize cascaded
    self-evaluation data, fine-tune, quantize, export (GGUF/ONNX) and run the cascade on CPUs.

    Every command takes --json for one machine-readable JSON document on stdout.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def emit(result: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """stdout gets either the JSON document or the human rendering, never both."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))


@contextmanager
def progress(total: int, label: str, as_json: bool) -> Iterator[Callable[..., None]]:
    """A tqdm bar on stderr, off under --json/--quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    quiet = as_json or click.get_current_context().obj.get("quiet") or not sys.stderr.isatty()
    bar = tqdm(total=total or None, desc=label, file=sys.stderr, disable=quiet, unit="it")

    def update(done: int, new_total: int | None = None) -> None:
        if new_total is not None and bar.total != new_total:
            bar.total = new_total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def load_stage_packages() -> None:
    """Import the stage packages so their registry entries exist (for `list`)."""
    for name in STAGE_PACKAGES:
        importlib.import_module(name)
    from training.synth.teachers import register_all

    register_all()


# ---------------------------------------------------------------- list
@main.command("list")
@click.argument("what", type=click.Choice(["archs", "backends", "teachers", "quant", "exporters"]))
@json_option
def list_cmd(what: str, as_json: bool) -> None:
    """List what is registered: architectures, backends, teachers, quantization types, exporters."""
    import casseat_edge.models  # noqa: F401  (registers the architectures)
    from casseat_edge.registry import REGISTRIES

    load_stage_packages()
    rows = REGISTRIES[what].describe()
    emit({"kind": what, "entries": rows}, as_json, lambda r: _render_rows(r["entries"], what))


def _render_rows(rows: list[dict[str, Any]], what: str) -> str:
    if not rows:
        return f"no {what} registered yet"
    return "\n".join(f"{r['name']:<40} {r.get('summary', '')}" for r in rows)


# ---------------------------------------------------------------- bench
@main.group()
def bench() -> None:
    """Synthetic visual-math benchmarks and official dataset files."""


def _bench_config_class() -> Any:
    from casseat_edge.bench import BenchConfig

    return BenchConfig


@bench.command("make")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click_options(_bench_config_class())
@json_option
def bench_make(config_file: str | None, as_json: bool, **params: Any) -> None:
    """Render a deterministic synthetic benchmark: problems.jsonl + images/ + casseat.json.

    Example: casseat-edge bench make --out bench --n 1000 --seed 7
    """
    from casseat_edge.bench import BenchConfig, make_bench

    config = load_config(BenchConfig, config_file, cli_overrides(params))
    with progress(config.n, "rendering", as_json) as update:
        summary = make_bench(config, progress=update)
    emit(summary, as_json, _render_bench)


def _render_bench(s: dict[str, Any]) -> str:
    counts = s.get("counts", {})
    lines = [f"wrote {s['n']} problems to {s['path']} in {s['seconds']:.1f} s"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in counts.items()]
    return "\n".join(lines)


def _load(path: str, fmt: str, skip_invalid: bool) -> Any:
    from casseat_edge.loaders import load_problems

    return load_problems(path, fmt=fmt, skip_invalid=skip_invalid)


def _formats() -> list[str]:
    from casseat_edge.loaders import FORMATS

    return ["auto", *FORMATS]


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(_formats()),
    default="auto",
    show_default=True,
    help="Dataset layout (auto detects from the file name and fields).",
)
skip_option = click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip bad rows (recorded in the output) instead of failing.",
)


@bench.command("check")
@click.argument("path", type=click.Path())
@format_option
@skip_option
@json_option
def bench_check(path: str, fmt: str, skip_invalid: bool, as_json: bool) -> None:
    """Validate a problem set (ours, MathVista, MATH-Vision, We-Math, MathVerse) and count it."""
    problems = _load(path, fmt, skip_invalid)
    result = _problem_stats(problems)
    emit(result, as_json, lambda r: "\n".join(f"{k}: {json.dumps(v)}" for k, v in r.items()))


def _problem_stats(problems: Any) -> dict[str, Any]:
    from collections import Counter

    rows = problems.rows
    return {
        "source": problems.source,
        "n": len(rows),
        "skipped": len(problems.skipped),
        "skipped_rows": problems.skipped[:20],
        "by_answer_type": dict(Counter(r["answer_type"] for r in rows)),
        "by_family": dict(Counter(r["metadata"].get("family", "unknown") for r in rows)),
    }


@bench.command("convert")
@click.argument("path", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output directory (our format).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it is a bench directory.")
@format_option
@skip_option
@json_option
def bench_convert(
    path: str, out: str, overwrite: bool, fmt: str, skip_invalid: bool, as_json: bool
) -> None:
    """Convert an official dataset file into our problems.jsonl + images/ layout."""
    from casseat_edge.bench.convert import prepare_convert_out
    from casseat_edge.loaders import convert_problems

    problems = _load(path, fmt, skip_invalid)
    prepare_convert_out(problems, out, overwrite)
    written = convert_problems(problems, out)
    result = {**_problem_stats(problems), "out": str(written)}
    emit(
        result, as_json, lambda r: f"wrote {r['n']} problems to {r['out']} ({r['skipped']} skipped)"
    )


# ---------------------------------------------------------------- synth
def _synth_config_class() -> Any:
    from training.synth import SynthConfig

    return SynthConfig


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click_options(_synth_config_class())
@json_option
def synth(config_file: str | None, as_json: bool, **params: Any) -> None:
    """Synthesize Cas-SEAT training data: a teacher solves (stage 1) and reviews (stage 2) each
    problem, Double-level Data Filtering keeps consistent outputs, CoT and evaluation samples mix.

    Example: casseat-edge synth --problems bench --teacher procedural --out synth
    """
    from training.synth import SynthConfig, synthesize

    config = load_config(SynthConfig, config_file, cli_overrides(params))
    with progress(0, "problems", as_json) as update:
        stats = synthesize(config, progress=lambda done, total: update(done, total))
    emit(stats, as_json, _render_synth)


def _render_synth(s: dict[str, Any]) -> str:
    lines = [
        f"{s['problems']} problems with {s['teacher']} ({s['mode']}), "
        f"{s['throughput']['problems_per_s']} problems/s",
        f"train samples: {json.dumps(s['samples']['train'])}; held out: {json.dumps(s['samples']['heldout'])}",
        f"keep rate: {json.dumps(s['keep_rate'])}; verdicts: {json.dumps(s['verdicts'])}",
        f"rejected: {json.dumps(s['rejections'])}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- train
def _train_config_class() -> Any:
    from training.sft import SFTConfig

    return SFTConfig


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click_options(_train_config_class())
@json_option
def train(config_file: str | None, as_json: bool, **params: Any) -> None:
    """Fine-tune a model on Cas-SEAT samples (LoRA, QLoRA or full) with the Hugging Face Trainer;
    the loss covers only the assistant turns to learn. Writes a loadable HF model directory
    (LoRA merged), adapter/, checkpoints/, train_log.json, loss.png and casseat.json.

    \b
    Example: casseat-edge train --data synth --model tiny:smolvlm --out sft --epochs 2
    Several processes: torchrun --nproc_per_node 2 -m training.sft --data synth --out sft
    """
    from training.sft import SFTConfig
    from training.sft import train as run_training

    config = load_config(SFTConfig, config_file, cli_overrides(params))
    with progress(0, "steps", as_json) as update:
        summary = run_training(config, progress=lambda done, total: update(done, total))
    if summary["process_index"] == 0:  # under torchrun, one result document, not one per process
        emit(summary, as_json, _render_train)


def _render_train(s: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{s['method']} on {s['base']}: {s['samples']} samples ({s['skipped_long']} skipped "
            f"as too long), {s['steps']} steps, {s['epochs']} epochs",
            f"loss {s['first_loss']} -> {s['final_loss']}; {s['tokens_per_s']} tokens/s "
            f"over {s['train_seconds']} s",
            f"wrote {s['out']}",
        ]
    )


# ---------------------------------------------------------------- export
def _export_config_classes() -> tuple[Any, ...]:
    """Each exporter's config class; the command's flags are the union of their fields."""
    from export.gguf import GgufExportConfig
    from export.onnx import OnnxExportConfig
    from quantize.config import QuantizeConfig

    return GgufExportConfig, OnnxExportConfig, QuantizeConfig


def _export_options(func: Callable) -> Callable:
    """--quant is shared (gguf takes one type, onnx several); other fields appear once each."""
    import dataclasses

    seen: set[str] = {"quant"}
    for cls in _export_config_classes():
        names = {f.name for f in dataclasses.fields(cls)}
        func = click_options(cls, skip=tuple(seen))(func)
        seen |= names
    return click.option(
        "--quant",
        multiple=True,
        help="gguf: one text-model type (f32, f16, q8_0, q4_k_m, ...)  [default: f16]; onnx: "
        "fp32|int8|int4, several allowed (comma-separated or repeated)  [default: fp32]",
    )(func)


def _single_quant(config_class: Any, overrides: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Formats whose `quant` is one value take exactly one --quant."""
    from casseat_edge.errors import ConfigError

    quant = overrides.get("quant")
    field = config_class.__dataclass_fields__.get("quant")
    if field is None and quant:
        raise ConfigError(f"--format {fmt} takes --method, not --quant")
    if quant is None or field is None or not isinstance(field.default, str):
        return overrides
    if len(quant) != 1:
        raise ConfigError(f"--format {fmt} takes one --quant, got {', '.join(quant)}")
    return {**overrides, "quant": quant[0]}


@main.command()
@click.option(
    "--format", "fmt", default="gguf", show_default=True, help="Exporter: gguf | onnx | bnb."
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@_export_options
@json_option
def export(fmt: str, config_file: str | None, as_json: bool, **params: Any) -> None:
    """Export a model for an edge runtime and verify it against PyTorch (exit 3 if parity fails,
    after the files are written). GGUF: text model + mmproj for VLMs, llama.cpp quant types.
    ONNX: transformers.js' layout (text: model.onnx; VLM: vision_encoder / embed_tokens /
    decoder_model_merged), fp32|int8|int4 (files _int8, _q4). bnb: a bitsandbytes checkpoint
    for the torch backend, --method bnb-int8|bnb-nf4 (the same as `casseat-edge quantize`).
    Flags of one format only (e.g. --mmproj-quant, --opset) are errors with the other.

    Example: casseat-edge export --model tiny:smolvlm --format onnx --out onnx --quant fp32,int4
    """
    load_stage_packages()
    from casseat_edge.registry import EXPORTERS

    exporter = EXPORTERS.get(fmt)
    overrides = _single_quant(exporter.config_class, cli_overrides(params), fmt)
    config = load_config(exporter.config_class, config_file, overrides)
    emit(exporter.export(config), as_json, _render_export)


def _render_export(s: dict[str, Any]) -> str:
    lines = [f"{s['format']} export of {s['model']} -> {s['out']} ({s['seconds']} s)"]
    for f in s["files"]:
        bits = f.get("bits_per_weight")
        lines.append(
            f"  {f['file']:<28} {f['size_mb']:>9.2f} MB"
            + (f"  {bits:>6.2f} bits/weight" if bits is not None else "")
        )
    if s.get("method"):  # bitsandbytes: bits over the quantized linear weights
        lines.append(f"  {s['method']}: {s['bits_per_weight']} bits/weight over linear layers")
    lines += [
        f"  variant {v['quant']:<6} {v['size_mb']:>9.2f} MB  {v['bits_per_weight']:>6.2f} bits/weight"
        for v in s.get("variants", [])
    ]
    keys = ("top1", "kl", "rel_max_abs", "logit_change", "cosine")
    for row in s["parity"]:
        shown = {k: v for k, v in row.items() if k in keys}
        check = f"{row['check']} {row.get('type', '')}".strip()
        lines.append(f"  {check:<18} {'ok' if row['passed'] else 'FAILED'}  {shown or ''}")
    if not s["verified"]:
        lines.append("  not verified (--no-verify)")
    return "\n".join(lines)


# ---------------------------------------------------------------- run
def _cascade_config_class() -> Any:
    from runtime.config import CascadeConfig

    return CascadeConfig


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option(
    "--model",
    "model_spec",
    default="embedded:smollm2-135m-instruct",
    show_default=True,
    help="Model spec: HF dir, .gguf, tiny:<arch> or embedded:<name>.",
)
@click.option("--image", type=click.Path(dir_okay=False), help="Problem image (PNG/JPEG/WebP).")
@click.option("--question", required=True, help="The question text.")
@click.option("--caption", help="Image description (what text-only models read).")
@click.option("--choices", multiple=True, help="A multiple-choice option (repeat the flag).")
@click.option("--answer", help="The expected answer: the result then says whether it is correct.")
@click.option(
    "--answer-type",
    type=click.Choice(["integer", "float", "text", "multi_choice"]),
    help="How the answer is compared (default: text, multi_choice with --choices).",
)
@click_options(_cascade_config_class())
@json_option
def run(
    config_file: str | None,
    model_spec: str,
    image: str | None,
    question: str,
    caption: str | None,
    choices: tuple[str, ...],
    answer: str | None,
    answer_type: str | None,
    as_json: bool,
    **params: Any,
) -> None:
    """Solve one problem with the cascade: prints the reasoning, the verdict, the answer and a
    per-stage latency table (or one JSON document with --json). The cascade's flags are the keys
    of --config (runtime.config.CascadeConfig).

    Example: casseat-edge run --model embedded:smollm2-135m-instruct --backend llama.cpp
    --question "What is the area?" --caption "A 3 by 4 rectangle." --answer 12 --answer-type integer
    """
    from runtime import Cascade
    from runtime.config import CascadeConfig
    from runtime.profiler import process_stats

    config = load_config(CascadeConfig, config_file, cli_overrides(params))
    fields = {
        k: v
        for k, v in dict(
            caption=caption, answer=answer, answer_type=answer_type, choices=list(choices) or None
        ).items()
        if v is not None
    }
    if choices and "answer_type" not in fields:
        fields["answer_type"] = "multi_choice"
    with Cascade(model_spec, config) as cascade:
        result = cascade.solve(image, question, **fields)
        emit({**result.to_dict(), **process_stats(cascade)}, as_json, _render_run(result))


def _render_run(result: Any) -> Callable[[dict[str, Any]], str]:
    from runtime.profiler import latency_table

    def render(doc: dict[str, Any]) -> str:
        lines = []
        for stage in result.stages:
            lines += [f"== {stage.name} ==", stage.text, ""]
        lines.append(
            f"verdict: {result.verdict}   answer: {result.answer} ({result.answer_source})"
            + ("" if result.correct is None else f"   correct: {result.correct}")
        )
        lines += [
            latency_table(result),
            f"peak RSS {doc['peak_rss_mb']} MB, model "
            f"{doc['model_bytes'] / 1e6:.1f} MB ({result.backend}, {result.policy})",
        ]
        return "\n".join(lines)

    return render


# ---------------------------------------------------------------- quantize
def _quantize_config_class() -> Any:
    from quantize.config import QuantizeConfig

    return QuantizeConfig


@main.command("quantize")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click_options(_quantize_config_class())
@json_option
def quantize_command(config_file: str | None, as_json: bool, **params: Any) -> None:
    """Quantize a model's linear layers with bitsandbytes (bnb-int8, bnb-nf4) into a safetensors
    checkpoint the torch backend reloads; checks next-token parity against the fp32 source
    (exit 3 if it fails, after the files are written).

    Example: casseat-edge quantize --model tiny:llama --method bnb-nf4 --out llama-nf4
    """
    from quantize import QuantizeConfig, quantize

    config = load_config(QuantizeConfig, config_file, cli_overrides(params))
    emit(quantize(config), as_json, _render_quantize)


def _render_quantize(s: dict[str, Any]) -> str:
    p = s["parity"][0]
    return "\n".join(
        [
            f"{s['method']} of {s['model']} -> {s['out']} ({s['seconds']} s): {s['size_mb']} MB, "
            f"{s['bits_per_weight']} bits/weight over {s['quantized_params']} linear params",
            f"  parity vs fp32 over {p['positions']} positions: top1 {p['top1']} "
            f"(min {p['top1_min']}), KL {p['kl']} (max {p['kl_max']})",
        ]
    )


# ---------------------------------------------------------------- score
@main.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--bench", "bench_path", required=True, type=click.Path(), help="Problem set.")
@format_option
@json_option
@click.pass_context
def score(ctx: click.Context, results: str, bench_path: str, fmt: str, as_json: bool) -> None:
    """Re-score a results.jsonl against a problem set with the rule-based extractor."""
    from casseat_edge.scoring import score_file

    problems = _load(bench_path, fmt, skip_invalid=False)
    by_pid = {p["pid"]: p for p in problems.rows}
    summary = score_file(results, by_pid, bench=problems.source)
    missing = summary["missing"]
    if missing and not ctx.obj.get("quiet"):
        click.echo(
            f"warning: {len(missing)} of {len(missing) + summary['n']} rows in {results} name "
            f"pids not in {problems.source} (first: {missing[0]!r}); they are not scored",
            err=True,
        )
    emit(summary, as_json, _render_score)


def _render_score(s: dict[str, Any]) -> str:
    lines = [f"accuracy ({s['method']}): {s['accuracy']:.3f}  ({s['correct']}/{s['n']})"]
    for family, row in sorted(s["by_family"].items()):
        lines.append(f"  {family:<20} {row['accuracy']:.3f}  ({row['correct']}/{row['n']})")
    return "\n".join(lines)


# ---------------------------------------------------------------- eval
def _eval_config_class() -> Any:
    from runtime.evaluate import EvalConfig

    return EvalConfig


@main.command("eval")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click_options(_eval_config_class())
@json_option
def eval_cmd(config_file: str | None, as_json: bool, **params: Any) -> None:
    """Evaluate a model with a cascade policy on a problem set: results.jsonl (one row per
    problem, resumable) and summary.json (accuracy, verdicts, latency p50/p90, tokens/s, RSS).

    Example: casseat-edge eval --model embedded:smollm2-135m-instruct --backend llama.cpp
    --bench bench --out runs/eval
    """
    from runtime.evaluate import EvalConfig, evaluate

    config = load_config(EvalConfig, config_file, cli_overrides(params))
    with progress(0, "problems", as_json) as update:
        summary = evaluate(config, progress=lambda done, total: update(done, total))
    emit(summary, as_json, _render_eval)


def _render_eval(s: dict[str, Any]) -> str:
    total = s["latency_ms"]["total_ms"]
    return (
        f"{s['model']} / {s['backend']} / {s['policy']}: accuracy {s['accuracy']:.3f} "
        f"({s['correct']}/{s['n']}, rule-extracted), p50 {total['p50']} ms, p90 {total['p90']} ms, "
        f"decode {s['decode_tokens_per_s']} tokens/s, {s['errors']} errors"
    )


# ---------------------------------------------------------------- report
@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@json_option
def report(run_dirs: tuple[str, ...], out: str, as_json: bool) -> None:
    """Latency/accuracy tradeoff report over evaluation runs: report.html (self-contained),
    tradeoff.png (Pareto front), per-stage latency, accuracy by family, verdict confusion,
    report.md and report.json.

    Example: casseat-edge report runs/eval-* --out report
    """
    from runtime.report import write_report

    document = write_report(list(run_dirs), out)
    emit(
        document,
        as_json,
        lambda d: f"wrote {out}/report.html; Pareto front: {', '.join(d['pareto_front'])}",
    )


# ---------------------------------------------------------------- models
@main.command()
@click.argument("spec")
@json_option
def inspect(spec: str, as_json: bool) -> None:
    """Resolve a model spec (path, .gguf, embedded:NAME, tiny:ARCH[@SEED]) and describe it."""
    from casseat_edge.models import resolve_model

    ref = resolve_model(spec)
    info = ref.describe()
    manifest = Path(ref.path) / "casseat.json"
    if manifest.is_file():
        info["manifest"] = json.loads(manifest.read_text())
    emit(info, as_json, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items() if k != "manifest"))


# ---------------------------------------------------------------- pipeline
def _pipeline_config_class() -> Any:
    from casseat_cli.pipeline import PipelineConfig

    return PipelineConfig


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click_options(_pipeline_config_class())
@json_option
@click.pass_context
def pipeline(ctx: click.Context, config_file: str | None, as_json: bool, **params: Any) -> None:
    """The main job: every stage in order on the embedded default, fully offline.

    bench -> model (tokenizer check) -> synth (procedural + a real SmolLM2 slice) -> train the
    student (pretrained SmolLM2-135M with a small vision tower, LoRA) -> export (GGUF, ONNX,
    bitsandbytes; each verified) -> eval (the --evaluate artifacts x policies on the held-out
    split) -> report (OUT/report/report.html, tradeoff.png).
    Re-running skips stages whose inputs are unchanged; after Ctrl-C it continues where it
    stopped. Writes OUT/pipeline.json. Exit 3 when an export failed verification (the report is
    still written).

    Example: casseat-edge pipeline --fast --out runs/fast
    """
    from casseat_cli.pipeline import PipelineConfig, check_parity, run_pipeline

    config = load_config(PipelineConfig, config_file, cli_overrides(params))
    quiet = as_json or ctx.obj.get("quiet") or not sys.stderr.isatty()
    with _stage_bars(quiet) as bars:
        summary = run_pipeline(
            config, log=lambda msg: None if quiet else click.echo(msg, err=True), progress=bars
        )
    emit(summary, as_json, _render_pipeline)
    check_parity(summary)


@contextmanager
def _stage_bars(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """One tqdm bar per labelled piece of work (a training run, an evaluation)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if quiet:
            return
        if label not in bars:
            for bar in bars.values():
                bar.close()
            bars.clear()
            bars[label] = tqdm(total=total or None, desc=label, file=sys.stderr, leave=False)
        bar = bars[label]
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def _render_pipeline(s: dict[str, Any]) -> str:
    lines = [f"pipeline -> {s['out']} ({s['seconds']:.0f} s)"]
    lines += [
        f"  {name:<8} {row.get('status', 'done'):<8} {row['seconds']:>7.1f} s"
        for name, row in s["stages"].items()
    ]
    head = s["headline"]
    if head.get("accuracy"):
        shown = ", ".join(f"{p} {a:.3f}" for p, a in head["accuracy"].items())
        lines.append(f"held-out accuracy ({head['reference']}): {shown}")
    if "cas_seat_minus_cot_points" in head:
        lines.append(f"cas-seat - cot: {head['cas_seat_minus_cot_points']:+.1f} points")
    lines.append(f"report: {s['out']}/report/report.html")
    lines += [f"verification FAILED: {f}" for f in s["parity_failures"]]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from casseat_cli.launch import entry

    entry()
