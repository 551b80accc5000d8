"""The exporter contract: what `casseat-edge export --format <name>` (and the main job) can rely on
from every entry of `casseat_edge.registry.EXPORTERS` (gguf, onnx, bnb).

An exporter is a class registered by name with
- `config_class`: a `StageConfig` with at least `model`, `out` and `overwrite`;
- `describe()`: what it supports (architectures, types), for `casseat-edge list exporters`;
- `export(config)`: writes `config.out` through `publish` and returns its summary, whose keys
  `check_summary` checks: `format`, `model`, `out`, `files` (one row per file: `file`,
  `size_mb`), `parity` (one row per check: `check`, `passed`; a `type` where one directory
  holds several variants), `passed` (None when not verified) and `seconds`.

`publish` is the one write path: every file and the manifest go into a staging directory that
moves into place only when complete (`casseat_edge.artifacts.staged_out_dir`), and a failed
verification raises `ParityError` (exit 3) only after the files are in place, so they can be
inspected and their manifest says not passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from casseat_edge.artifacts import staged_out_dir
from casseat_edge.errors import ParityError

SUMMARY_KEYS = ("format", "model", "out", "files", "parity", "passed", "seconds")
CONFIG_FIELDS = ("model", "out", "overwrite")


class Exporter:
    """Base of the `EXPORTERS` entries; subclasses set `config_class` and implement `export`."""

    config_class: ClassVar[type]

    @staticmethod
    def describe() -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def export(config: Any) -> dict[str, Any]:
        raise NotImplementedError


def publish(
    config: Any,
    label: str,
    write: Callable[[Path], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
    kind: str = "export",
) -> dict[str, Any]:
    """Run `write(stage)` (it writes every file and the manifest into `stage` and returns the
    summary) and publish the files to `config.out`; `describe` words a failing parity row for
    the error. `kind`: the manifest kind an existing `--out` must have to be replaced."""
    with staged_out_dir(config.out, config.overwrite, kind=kind) as stage:
        summary = write(stage)
    summary["out"] = str(Path(config.out))
    check_summary(label, summary)
    failing = [row for row in summary["parity"] if not row["passed"]]
    if failing:
        raise ParityError(
            f"{config.out}: {label} written but verification failed: "
            + "; ".join(describe(row) for row in failing)
        )
    return summary


def check_summary(label: str, summary: dict[str, Any]) -> None:
    """Raise `TypeError` (a bug in the exporter, not the user's input) when a summary breaks
    the contract above."""
    problems = [f"no {key!r}" for key in SUMMARY_KEYS if key not in summary]
    files, parity = summary.get("files"), summary.get("parity")
    if not isinstance(files, list) or not files:
        problems.append("'files' must be a non-empty list")
    elif any(not {"file", "size_mb"} <= set(row) for row in files):
        problems.append("every file row needs 'file' and 'size_mb'")
    if not isinstance(parity, list):
        problems.append("'parity' must be a list of rows")
    elif any(not isinstance(row.get("passed"), bool) or "check" not in row for row in parity):
        problems.append("every parity row needs 'check' and a bool 'passed'")
    if problems:
        raise TypeError(f"{label} exporter summary breaks the contract: {'; '.join(problems)}")
