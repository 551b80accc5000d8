"""Shared fixtures. Built models (tokenizer, tiny models, the embedded HF copy) go to one cache per
test session, or to $CASSEAT_TEST_HOME when set (CI keeps it between runs to save minutes)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def casseat_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    home = os.environ.get("CASSEAT_TEST_HOME") or str(tmp_path_factory.mktemp("casseat-home"))
    os.environ["CASSEAT_HOME"] = home
    return home


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
