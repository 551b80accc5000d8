"""Registry, config precedence/validation, manifests and crash-safe writes."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest

from casseat_edge.artifacts import (
    JsonlAppender,
    prepare_out_dir,
    read_jsonl,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from casseat_edge.config import StageConfig, cli_overrides, load_config, option
from casseat_edge.errors import CasseatError, ConfigError, DataError, UnknownNameError
from casseat_edge.registry import Registry


def test_registry_register_get_and_unknown_lists_names():
    reg: Registry = Registry("widget")

    @reg.register("alpha", "a")
    class Alpha:
        """First widget."""

    assert reg.get("alpha") is Alpha and reg.get("a") is Alpha
    assert reg.describe() == [{"name": "alpha", "aliases": ["a"], "summary": "First widget."}]
    with pytest.raises(UnknownNameError, match="unknown widget 'beta'; expected one of: alpha"):
        reg.get("beta")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(object)


@dataclasses.dataclass(frozen=True)
class DemoConfig(StageConfig):
    n: int = option(3, "how many")
    mode: Literal["x", "y"] = option("x", "which mode")
    names: tuple[str, ...] = option((), "names")


def test_config_precedence_flag_over_yaml_over_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n: 5\nmode: y\nnames: [a, b]\n")
    assert load_config(DemoConfig) == DemoConfig()
    cfg = load_config(DemoConfig, path, {"n": 9, "mode": None})
    assert (cfg.n, cfg.mode, cfg.names) == (9, "y", ("a", "b"))


def test_config_unknown_keys_reported_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n: 5\nbogus: 1\nalso_bad: 2\n")
    with pytest.raises(ConfigError, match="also_bad, bogus"):
        load_config(DemoConfig, path)


def test_config_literal_checked_and_cli_lists_flattened():
    with pytest.raises(ConfigError, match="mode='z' is not one of: x, y"):
        load_config(DemoConfig, None, {"mode": "z"})
    assert cli_overrides({"names": ("a,b", "c"), "n": None, "mode": ()}) == {
        "names": ("a", "b", "c")
    }


def test_manifest_roundtrip_and_kind_check(tmp_path):
    write_manifest(tmp_path, "bench", {"n": 1}, {"x": "abc"}, counts={"a": 1})
    manifest = read_manifest(tmp_path, kind="bench")
    assert manifest["config"] == {"n": 1} and manifest["counts"] == {"a": 1}
    assert manifest["versions"]["casseat-edge"]
    with pytest.raises(CasseatError, match="expected a 'model' artifact, found 'bench'"):
        read_manifest(tmp_path, kind="model")


def test_jsonl_appender_drops_torn_tail_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')  # killed mid-write
    with JsonlAppender(path) as out:
        out.write({"a": 3})
    assert [row for _, row in read_jsonl(path)] == [{"a": 1}, {"a": 3}]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        list(read_jsonl(path))


def test_atomic_json_and_out_dir_guard(tmp_path):
    write_json_atomic(tmp_path / "x" / "f.json", {"k": 1})
    assert json.loads((tmp_path / "x" / "f.json").read_text()) == {"k": 1}
    assert not [p for p in (tmp_path / "x").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(
        CasseatError, match="already exists and is not empty; delete it, pass --overwrite"
    ):
        prepare_out_dir(tmp_path / "x")
    with pytest.raises(CasseatError, match="is not a casseat-edge bench directory"):
        prepare_out_dir(tmp_path / "x", overwrite=True, kind="bench")
    assert (tmp_path / "x" / "f.json").exists()  # an arbitrary folder is never deleted
    write_manifest(tmp_path / "x", "bench", {})
    assert prepare_out_dir(tmp_path / "x", overwrite=True, kind="bench").is_dir()
    assert not (tmp_path / "x" / "f.json").exists()
