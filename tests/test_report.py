"""Summaries and the tradeoff report: accuracy/latency/verdict numbers from results rows, the
Pareto front, every report file, and report.html rendered by a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from casseat_edge.artifacts import read_jsonl
from casseat_edge.bench import BenchConfig, make_bench
from runtime.report import PLOTS, pareto_front, write_report
from runtime.summary import summarize


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    make_bench(BenchConfig(out=str(out), n=36, seed=4))
    return {row["pid"]: row for _, row in read_jsonl(out / "problems.jsonl")}


def _rows(problems, right_every, ms, policy="cas-seat"):
    rows = []
    for i, (pid, p) in enumerate(sorted(problems.items())):
        right = i % right_every == 0
        answer = p["answer"] if right else "99999"
        stage1 = {
            "name": "stage1",
            "text": f"Final answer: {answer}",
            "prompt_tokens": 100,
            "new_prefill_tokens": 100,
            "completion_tokens": 20,
            "encode_ms": 5.0,
            "prefill_ms": ms,
            "decode_ms": 2 * ms,
            "ttft_ms": ms + 5,
        }
        stage2 = {**stage1, "name": "stage2", "new_prefill_tokens": 30, "prefill_ms": ms / 4}
        rows.append(
            {
                "pid": pid,
                "policy": policy,
                "answer": answer,
                "correct": right,
                "verdict": "Accept" if right else "Refine",
                "stages": [stage1, stage2],
            }
        )
    return rows


def test_summary_numbers(problems):
    summary = summarize(_rows(problems, 2, 10.0), problems, {"backend": "torch"})
    assert summary["n"] == 36 and summary["correct"] == 18 and summary["accuracy"] == 0.5
    assert summary["backend"] == "torch" and summary["method"] == "rule-extracted"
    assert sum(v["n"] for v in summary["by_family"].values()) == 36
    counts = summary["verdicts"]["counts"]
    assert counts["correct/Accept"] == 18 and counts["incorrect/Refine"] == 18
    assert summary["verdicts"]["self_eval_accuracy"] == 1.0
    stage2 = summary["latency_ms"]["stages"]["stage2"]
    assert (
        stage2["prefill_ms"]["p50"] == 2.5 and summary["latency_ms"]["total_ms"]["p50"] == 62.5
    )  # 35 + 27.5
    assert summary["decode_tokens_per_s"] == 1000.0  # 40 tokens in 40 ms per problem


def test_pareto_front():
    runs = [
        {"accuracy": 0.5, "latency_ms": {"total_ms": {"p50": 10}}},
        {"accuracy": 0.6, "latency_ms": {"total_ms": {"p50": 20}}},
        {"accuracy": 0.4, "latency_ms": {"total_ms": {"p50": 30}}},  # dominated by both
        {"accuracy": 0.7, "latency_ms": {"total_ms": {"p50": 50}}},
    ]
    assert pareto_front(runs) == [0, 1, 3]


def _write_runs(problems, root):
    dirs = []
    for name, right_every, ms, size, quant in (
        ("a", 2, 10.0, 100e6, "f16"),
        ("b", 3, 4.0, 30e6, "q4_k_m"),
        ("c", 4, 12.0, 60e6, "q8_0"),
    ):
        run = root / name
        run.mkdir()
        summary = summarize(
            _rows(problems, right_every, ms),
            problems,
            {"backend": "llama.cpp", "quant": quant, "policy": "cas-seat", "model_bytes": size},
        )
        (run / "summary.json").write_text(json.dumps(summary))
        dirs.append(run)
    return dirs


def test_report_files(problems, tmp_path):
    document = write_report(_write_runs(problems, tmp_path), tmp_path / "report")
    assert document["pareto_front"] == ["llama.cpp/q4_k_m/cas-seat", "llama.cpp/f16/cas-seat"]
    for name in PLOTS:
        with Image.open(tmp_path / "report" / f"{name}.png") as image:
            assert image.width > 300 and len(np.unique(np.asarray(image.convert("L")))) > 10
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS) and 'src="http' not in html
    assert (
        "| llama.cpp/q4_k_m/cas-seat | 0.333 (12/36)"
        in (tmp_path / "report" / "report.md").read_text()
    )


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None,
    reason="no chromium installed (scripts/setup.sh installs it with apt-get where it can)",
)
def test_report_renders_in_headless_chromium(problems, tmp_path):
    write_report(_write_runs(problems, tmp_path), tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (tmp_path / "report" / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as image:
        gray = np.asarray(image.convert("L"))
        colors, dark = len(np.unique(gray)), int((gray < 128).sum())
    assert colors > 50 and dark > 5000  # text, tables and the embedded plots, not a blank page


def test_report_cli(problems, tmp_path):
    from click.testing import CliRunner

    from casseat_cli.cli import main

    dirs = [str(d) for d in _write_runs(problems, tmp_path)]
    result = CliRunner().invoke(main, ["report", *dirs, "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["runs"]) == 3
    missing = CliRunner().invoke(
        main, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]
    )
    assert missing.exit_code == 1 and "summary.json: not found" in missing.stderr
