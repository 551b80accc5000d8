"""benchmarks/paired_eval.py: the exact sign test, and the problem-by-problem comparison of two
real `casseat-edge eval` runs (the same run twice agrees everywhere; rows edited to differ are
counted as lost, gained and changed texts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.bench import BenchConfig, make_bench

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_eval.py"
spec = importlib.util.spec_from_file_location("paired_eval", SCRIPT)
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def test_sign_test_is_exact():
    assert paired.sign_test(0, 0) == 1.0
    assert paired.sign_test(3, 3) == 1.0
    assert paired.sign_test(11, 3) == pytest.approx(0.0574, abs=1e-4)  # 2 * 470 / 16384
    assert paired.sign_test(0, 6) == pytest.approx(2 / 64)


def test_compare_two_real_runs(tmp_path):
    make_bench(BenchConfig(out=str(tmp_path / "bench"), n=20, seed=3))

    def evaluate(name):
        args = ["eval", "--model", "tiny:llama", "--bench", str(tmp_path / "bench"), "--out",
                str(tmp_path / name), "--limit", "3", "--max-new-tokens", "4"]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return tmp_path / name

    a, b = evaluate("run-a"), evaluate("run-b")
    same = paired.compare(a, b)
    assert same["n"] == 3 and same["lost"] == same["gained"] == 0
    assert same["identical_stage1_texts"] == 3 and same["right_a"] == same["right_b"]
    rows = [json.loads(line) for line in (a / "results.jsonl").read_text().splitlines()]
    assert same["right_a"] == sum(bool(r["correct"]) for r in rows)
    # b answers one problem's stage 1 with the right answer in other words (the tiny model
    # gets none right), and loses one final answer that a got right
    gold = {
        p["pid"]: p["answer"]
        for p in map(json.loads, (tmp_path / "bench" / "problems.jsonl").read_text().splitlines())
    }
    edited = [dict(r) for r in rows]
    edited[0]["stages"] = [{**rows[0]["stages"][0], "answer": gold[rows[0]["pid"]], "text": "x"}]
    rows[1]["correct"], edited[1]["correct"] = True, False
    (a / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edited))
    stage1 = paired.compare(a, b, stage1=True)
    assert (stage1["lost"], stage1["gained"], stage1["identical_stage1_texts"]) == (0, 1, 2)
    final = paired.compare(a, b)
    assert (final["right_a"], final["lost"], final["gained"]) == (1, 1, 0)
