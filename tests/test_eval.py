"""`casseat-edge eval`: results rows per problem, resumable, a failing problem recorded without
ending the run, the summary, and a report over two real evaluation runs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.artifacts import read_jsonl
from casseat_edge.bench import BenchConfig, make_bench
from casseat_edge.errors import ConfigError
from runtime.evaluate import EvalConfig, derive_cot, evaluate
from runtime.report import write_report


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    make_bench(BenchConfig(out=str(out), n=30, seed=5))
    return out


def test_eval_resume_and_failures(bench, tmp_path):
    config = EvalConfig(
        model="tiny:llama", bench=str(bench), out=str(tmp_path / "e"), limit=3, max_new_tokens=6
    )
    summary = evaluate(config)
    rows = [r for _, r in read_jsonl(tmp_path / "e" / "results.jsonl")]
    assert summary["n"] == 3 and len(rows) == 3 and summary["method"] == "rule-extracted"
    assert all(r["stages"][0]["name"] == "stage1" and r["policy"] == "cas-seat" for r in rows)
    assert summary["latency_ms"]["total_ms"]["n"] == 3 and summary["model_bytes"] > 0
    with pytest.raises(ConfigError, match="already exists and is not empty; pass --resume"):
        evaluate(config)
    # a problem the text-only model cannot read (no caption) is recorded, and the run goes on
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (bench / "problems.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["metadata"].pop("caption")
    first["metadata"]["split"] = "test"
    (bad / "problems.jsonl").write_text(json.dumps(first) + "\n")
    (bad / "images").mkdir()
    (bad / first["image"]).write_bytes((bench / first["image"]).read_bytes())
    summary = evaluate(
        EvalConfig(model="tiny:llama", bench=str(bad), out=str(tmp_path / "f"), max_new_tokens=4)
    )
    (row,) = [r for _, r in read_jsonl(tmp_path / "f" / "results.jsonl")]
    assert summary["errors"] == 1 and "caption" in row["error"] and row["correct"] is False
    again = evaluate(EvalConfig(**{**config.to_dict(), "resume": True, "limit": 5}))
    pids = [r["pid"] for _, r in read_jsonl(tmp_path / "e" / "results.jsonl")]
    assert again["n"] == 5 and len(pids) == len(set(pids)) == 5


def test_eval_cli_and_report_over_real_runs(bench, tmp_path):
    runs = []
    for policy in ("cot", "cas-seat"):
        out = tmp_path / policy
        result = CliRunner().invoke(
            main,
            [
                "eval",
                "--model",
                "tiny:llama",
                "--bench",
                str(bench),
                "--out",
                str(out),
                "--limit",
                "2",
                "--policy",
                policy,
                "--max-new-tokens",
                "4",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["policy"] == policy
        runs.append(out)
    document = write_report(runs, tmp_path / "report")
    assert [r["label"] for r in document["runs"]] == ["torch/fp32/cot", "torch/fp32/cas-seat"]
    assert (tmp_path / "report" / "tradeoff.png").stat().st_size > 10_000


def test_cot_derived_from_cas_seat_equals_a_generated_cot_run(bench, tmp_path):
    """The packaged SmolLM2 on real llama.cpp: cot read off cas-seat's stage 1 is the cot run.
    One token per decode pass: with speculative drafts, each run drafts from its own earlier
    replies, and a draft's batch arithmetic can flip a near tie (measured: README)."""
    runs = {}
    for policy in ("cot", "cas-seat"):
        runs[policy] = evaluate(
            EvalConfig(
                model="embedded:smollm2-135m-instruct",
                backend="llama.cpp",
                bench=str(bench),
                out=str(tmp_path / policy),
                policy=policy,
                limit=4,
                max_new_tokens=40,
                threads=1,
                draft_tokens=0,
            )
        )
    derived = derive_cot(tmp_path / "cas-seat", tmp_path / "derived")
    generated = [r for _, r in read_jsonl(tmp_path / "cot" / "results.jsonl")]
    rows = [r for _, r in read_jsonl(tmp_path / "derived" / "results.jsonl")]
    assert [r["pid"] for r in rows] == [r["pid"] for r in generated]
    for mine, theirs in zip(rows, generated, strict=True):
        assert mine["stages"][0]["text"] == theirs["stages"][0]["text"]
        assert mine["stages"][0]["completion_tokens"] == theirs["stages"][0]["completion_tokens"]
        same = ("policy", "answer", "answer_source", "verdict", "correct")
        assert {k: mine[k] for k in same} == {k: theirs[k] for k in same}
    assert any(r["answer"] is not None for r in rows)  # real answers are compared
    assert derived["accuracy"] == runs["cot"]["accuracy"] and derived["policy"] == "cot"
    assert derived["derived_from"] == str(tmp_path / "cas-seat")
    assert derived["verdicts"]["self_eval_accuracy"] is None
    with pytest.raises(ConfigError, match="no stage 1 to derive cot from"):
        derive_cot(tmp_path / "cot", tmp_path / "again")
