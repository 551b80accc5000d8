"""Shared fixtures. Built models (tokenizer, tiny models, the embedded HF copy) go to one cache per
test session, or to $CASSEAT_TEST_HOME when set (CI keeps it between runs to save minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def casseat_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    home = os.environ.get("CASSEAT_TEST_HOME") or str(tmp_path_factory.mktemp("casseat-home"))
    os.environ["CASSEAT_HOME"] = home
    return home


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def make_synth(root: Path, n: int, seed: int) -> Path:
    """Real Cas-SEAT samples in `root/s`: an `n`-problem benchmark through the procedural teacher."""
    from casseat_edge.bench import BenchConfig, make_bench
    from training.synth import SynthConfig, synthesize

    make_bench(BenchConfig(out=str(root / "bench"), n=n, seed=seed))
    synthesize(SynthConfig(problems=str(root / "bench"), teacher="procedural", out=str(root / "s")))
    return root / "s"
