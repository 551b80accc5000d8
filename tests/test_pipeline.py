"""The main job end to end (`casseat-edge pipeline --fast`, the CI-sized run) and its skip / resume
rule. The end-to-end run happens once per module; the other tests read what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from casseat_cli.pipeline import PipelineConfig
from casseat_cli.pipeline_stages import Context
from casseat_edge.allocator import mimalloc_library
from casseat_edge.errors import ConfigError


def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "casseat_cli.cli", *args], capture_output=True, text=True
    )
    assert result.returncode == code, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    return out, json.loads(cli("pipeline", "--fast", "--out", str(out), "--json").stdout)


def test_fast_pipeline_runs_every_stage_and_writes_the_report(fast_run):
    out, summary = fast_run
    assert list(summary["stages"]) == [
        "bench",
        "model",
        "synth",
        "train",
        "export",
        "eval",
        "report",
    ]
    assert summary["stages"]["model"]["tokenizer_parity"]["mismatches"] == 0
    assert summary["stages"]["synth"]["cas-seat"]["samples"]["train"]["eval"] > 0
    assert summary["stages"]["synth"]["real"]["problems"] == 3
    report = out / "report"
    for name in ("report.html", "tradeoff.png", "report.md", "report.json"):
        assert (report / name).stat().st_size > 0, name
    document = json.loads((report / "report.json").read_text())
    labels = {run["label"] for run in document["runs"]}
    config = PipelineConfig(fast=True)
    backends = {"torch", "llama.cpp", "onnxruntime"}
    assert {label.split("/")[0] for label in labels} == backends
    assert {label.split("/")[-1] for label in labels} == set(config.policies)
    assert len(labels) == len(config.policies) * len(config.evaluate)
    for run in document["runs"]:
        artifact = run["label"].rsplit("/", 1)[0]
        assert run["n"] == config.held_out_limit(artifact) and 0.0 <= run["accuracy"] <= 1.0
    headline = summary["headline"]
    assert headline["reference"] == config.evaluate[0]
    assert headline["n"] == config.held_out_limit(config.evaluate[0]) == 5
    assert set(headline["accuracy"]) == {"cot", "cas-seat"}
    assert set(summary["stages"]["export"]) - {"seconds"} == {"gguf-q8_0", "gguf-q4_k_m", "onnx"}
    assert summary["stages"]["train"]["cas-seat"]["steps"] == 3
    # --fast keeps llama.cpp's rounding (GPTQ would add 50 s; the full run and the GPTQ export
    # tests cover it)
    exports = summary["stages"]["export"]
    assert exports["gguf-q4_k_m"][0]["gptq_tensors"] is None
    # the CLI re-executed itself with mimalloc preloaded (casseat_cli.launch), where installed
    expected = "mimalloc" if mimalloc_library() else "system"
    assert summary["stages"]["train"]["cas-seat"]["allocator"] == expected
    assert "Exports" in (report / "report.md").read_text()
    cots = [run for run in summary["stages"]["eval"] if run.endswith("-cot")]
    assert len(cots) == len(config.evaluate)
    for run in cots:  # read off the same artifact's cas-seat stage 1
        cot = json.loads((out / "eval" / run / "summary.json").read_text())
        assert cot["derived_from"] == str(out / "eval" / run.replace("-cot", "-cas-seat"))


def test_rerun_skips_every_unchanged_stage(fast_run):
    out, _ = fast_run
    again = json.loads(cli("pipeline", "--fast", "--out", str(out), "--json").stdout)
    assert again["stages"]["bench"]["status"] == "skipped"
    assert again["stages"]["synth"]["cas-seat"]["status"] == "skipped"
    assert again["stages"]["train"]["cas-seat"]["status"] == "skipped"
    assert again["stages"]["eval"]["status"] == "skipped"
    runs = [row for row in again["stages"]["eval"].values() if isinstance(row, dict)]
    evaluations = len(PipelineConfig().evaluate) * len(PipelineConfig().policies)
    assert len(runs) == evaluations and {row["status"] for row in runs} == {"skipped"}
    assert again["stages"]["report"]["status"] == "skipped"
    assert again["seconds"] < 60


def test_config_limits_students_and_evaluations():
    config = PipelineConfig()
    limits = [config.held_out_limit(label) for label in config.evaluate]
    assert limits == [100, 30, 30, 10]  # the headline (llama.cpp/q8_0), others, torch
    # GPTQ calibration of the GGUF exports: the full run's default, off in --fast and --no-gptq
    assert config.gptq_samples == 64
    assert PipelineConfig(fast=True).gptq_samples == PipelineConfig(gptq=False).gptq_samples == 0
    assert PipelineConfig(eval_limit=10).held_out_limit("torch/fp32") == 10
    assert PipelineConfig(eval_limit=60).held_out_limit("llama.cpp/q4_k_m") == 60
    everything = PipelineConfig(eval_limit=-1, torch_eval_limit=-1)
    assert everything.held_out_limit("torch/fp32") == everything.held_out_limit("x/y") == 0
    assert PipelineConfig(fast=True).student_budget["steps"] == 3
    # tokens per problem are the same for every policy: seat's one generation gets two stages
    assert config.generation_budget_for("cas-seat") == config.generation_budget == 224
    assert config.generation_budget_for("cot") == 224
    assert config.generation_budget_for("seat") == 448
    assert PipelineConfig(fast=True, max_new_tokens=50).generation_budget_for("seat") == 100
    assert PipelineConfig(student="scratch").student_budget["steps"] == 400
    assert config.preset == "smollm2" and PipelineConfig(student="scratch").preset == "smolvlm"
    with pytest.raises(ConfigError, match="--student"):
        PipelineConfig(student="huge")
    with pytest.raises(ConfigError, match="--evaluate.*llama.cpp/f16.*not exported"):
        PipelineConfig(evaluate=("llama.cpp/f16",))
    assert PipelineConfig(gguf_quants=("f16",), evaluate=("llama.cpp/f16",)).exported[1] == (
        "llama.cpp/f16"
    )


def test_a_stage_stopped_midway_resumes_and_a_changed_one_restarts(tmp_path):
    ctx = Context(PipelineConfig(out=str(tmp_path)), tmp_path, lambda _: None, lambda *_: None)
    target = tmp_path / "work"
    calls = []

    def work(resume: bool) -> dict:
        calls.append(resume)
        target.mkdir(exist_ok=True)
        (target / "part").write_text("x")
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C midway: the stamp stays "not done"
        return {"ok": True}

    with pytest.raises(KeyboardInterrupt):
        ctx.stamped("demo", target, {"config": 1}, work)
    assert ctx.stamped("demo", target, {"config": 1}, work) == ({"ok": True}, "resumed")
    assert ctx.stamped("demo", target, {"config": 1}, work) == ({"ok": True}, "skipped")
    assert calls == [False, True]
    assert ctx.stamped("demo", target, {"config": 2}, work) == ({"ok": True}, "done")
    assert calls == [False, True, False]


def test_ablation_plan_compares_every_student_on_the_headline_artifact(tmp_path):
    from casseat_cli.pipeline_stages import Artifact, _evaluations, _run_name

    ctx = Context(
        PipelineConfig(out=str(tmp_path), ablation=True), tmp_path, lambda _: None, lambda *_: None
    )
    for student, label in [("cas-seat", "torch/fp32"), ("cas-seat", "llama.cpp/q8_0"),
                           ("cas-seat", "llama.cpp/q4_k_m"), ("cas-seat", "onnxruntime/fp32"),
                           ("cot", "llama.cpp/q8_0"), ("seat", "llama.cpp/q8_0")]:  # fmt: skip
        backend, quant = label.split("/")
        ctx.artifacts.append(Artifact(student, backend, quant, "m", tmp_path))
    plan = [(name, art.label, policy) for name, art, policy in _evaluations(ctx)]
    main = [(n, a, p) for n, a, p in plan if n == "cas-seat" and p != "seat"]
    assert {a for _, a, _ in main} == {"torch/fp32", "llama.cpp/q8_0", "llama.cpp/q4_k_m"}
    assert len(main) == 3 * 2  # onnxruntime/fp32 is exported but not in --evaluate
    for student in ("cas-seat", "cot", "seat"):
        mine = {p for n, a, p in plan if n == student and a == "llama.cpp/q8_0"}
        assert mine == {"cot", "cas-seat", "seat"}
    names = [_run_name(n, *a.split("/"), p) for n, a, p in plan]
    assert len(names) == len(set(names)) == 6 + 1 + 3 + 3


def test_tokenizer_parity_check_passes_ours_and_catches_another(tmp_path):
    """The main job's `model` stage: SmolLM2's rebuilt tokenizer gives llama.cpp's ids on every
    question, caption and choice (read from the GGUF's vocabulary alone); one that reads a
    common word as a new token does not."""
    from transformers import AutoTokenizer

    from casseat_cli.pipeline_stages import check_tokenizer_parity
    from casseat_edge.bench import BenchConfig, make_bench
    from casseat_edge.errors import ParityError
    from casseat_edge.models.embedded import embedded_gguf, embedded_tokenizer_dir

    make_bench(BenchConfig(out=str(tmp_path / "b"), n=6, seed=2))
    problems = tmp_path / "b" / "problems.jsonl"
    ours = check_tokenizer_parity(embedded_tokenizer_dir(), embedded_gguf(), problems)
    assert ours["mismatches"] == 0 and ours["texts"] >= 12
    other = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    other.add_tokens(["What", " the"])
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ParityError, match="ids differ from llama.cpp's"):
        check_tokenizer_parity(tmp_path / "other", embedded_gguf(), problems)
