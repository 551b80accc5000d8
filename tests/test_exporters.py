"""The exporter contract (`casseat_edge.exporting`): every `EXPORTERS` entry — gguf, onnx and the
bitsandbytes checkpoint — is driven the same way and returns files + parity rows."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from casseat_cli.cli import load_stage_packages, main
from casseat_edge.exporting import CONFIG_FIELDS, Exporter, check_summary
from casseat_edge.registry import EXPORTERS

EXTRA_FLAGS = {"gguf": ["--quant", "q8_0"], "onnx": ["--quant", "int8"], "bnb": []}


def test_every_exporter_is_registered_with_the_contract():
    load_stage_packages()
    assert set(EXPORTERS.names()) == {"gguf", "onnx", "bnb"}
    for name, exporter in EXPORTERS.items():
        assert issubclass(exporter, Exporter), name
        fields = {f.name for f in dataclasses.fields(exporter.config_class)}
        assert set(CONFIG_FIELDS) <= fields, name
        assert exporter.describe(), name


@pytest.mark.parametrize("fmt", sorted(EXTRA_FLAGS))
def test_each_exporter_returns_files_and_parity_rows(tmp_path, fmt):
    out = tmp_path / fmt
    args = ["export", "--format", fmt, "--model", "tiny:llama", "--out", str(out), "--json"]
    result = CliRunner().invoke(main, [*args, *EXTRA_FLAGS[fmt]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    check_summary(fmt, summary)
    assert summary["format"] == fmt and summary["passed"] is True
    assert summary["parity"] and all(row["passed"] for row in summary["parity"])
    for row in summary["files"]:
        assert (out / row["file"]).is_file(), row
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["parity"] == summary["parity"] and manifest["files"] == summary["files"]
    assert not (out / ".partial").exists()


def test_a_summary_that_breaks_the_contract_is_caught():
    good = {"format": "x", "model": "m", "out": "o", "seconds": 1.0, "passed": True,
            "files": [{"file": "a", "size_mb": 1.0}],
            "parity": [{"check": "logits", "passed": True}]}  # fmt: skip
    check_summary("x", good)
    with pytest.raises(TypeError, match="'parity' must be a list"):
        check_summary("x", {**good, "parity": {"check": "logits", "passed": True}})
    with pytest.raises(TypeError, match="bool 'passed'"):
        check_summary("x", {**good, "parity": [{"check": "logits", "passed": "yes"}]})
    with pytest.raises(TypeError, match="'size_mb'"):
        check_summary("x", {**good, "files": [{"file": "a"}]})
    with pytest.raises(TypeError, match="no 'seconds'"):
        check_summary("x", {k: v for k, v in good.items() if k != "seconds"})


def test_bnb_takes_method_not_quant(tmp_path):
    args = ["export", "--format", "bnb", "--model", "tiny:llama", "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(main, [*args, "--quant", "q8_0"])
    assert result.exit_code != 0 and "--format bnb takes --method, not --quant" in result.output
