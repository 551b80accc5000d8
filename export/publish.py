"""What every exporter does around its own writing: the files (manifest included) go into a
staging directory and move into place only when complete (`casseat_edge.artifacts.
staged_out_dir`), and a failed verification is raised only after they are in place (exit 3: the
files are there to inspect, their manifest says not passed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import staged_out_dir
from casseat_edge.errors import ParityError


def publish(
    config: Any,
    label: str,
    write: Callable[[Path], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Run `write(stage)` (it returns the summary, with `parity` rows) and publish its files to
    `config.out`; `describe` words a failing parity row for the error."""
    with staged_out_dir(config.out, config.overwrite, kind="export") as stage:
        summary = write(stage)
    summary["out"] = str(Path(config.out))
    failing = [row for row in summary["parity"] if not row["passed"]]
    if failing:
        raise ParityError(
            f"{config.out}: {label} written but verification failed: "
            + "; ".join(describe(row) for row in failing)
        )
    return summary
