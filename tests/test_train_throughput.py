"""Smoke test of `benchmarks/train_throughput.py`: two steps on tiny:smolvlm through a subprocess;
the last stdout line is the JSON summary with both tokens/s and peak RSS measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, however it is installed


def test_train_throughput_smoke():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "2", "--batch-size", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["model"] == "tiny:smolvlm"
    for key in ("ours_tokens_per_s", "bare_tokens_per_s", "ours_peak_rss_mib", "bare_peak_rss_mib"):
        assert summary[key] > 0, key
    assert summary["ratio"] > 0
    assert summary["tokens"] > 0
    assert summary["same_trainable_params"] is True
    assert summary["loss_max_abs_diff"] < 1e-3  # same init, batches and masks: same losses


def test_train_throughput_student_recipe_smoke():
    """`--recipe student`: the student's phase config against the plain Trainer, per step."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "2", "--batch-size", "2", "--recipe", "student"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["recipe"] == "student" and summary["loss_max_abs_diff"] is None
    assert summary["ours_s_per_step"] > 0 and summary["bare_s_per_step"] > 0
    expected = summary["bare_s_per_step"] / summary["ours_s_per_step"]
    assert abs(summary["ratio"] - expected) <= 0.01 * expected + 1e-3
    # ours' sample tokens/s: bare's non-padding count over ours' time (the same samples)
    tokens = summary["bare_tokens_per_s"] * summary["ratio"]
    assert abs(summary["ours_tokens_per_s"] - tokens) <= 0.01 * tokens + 0.1
