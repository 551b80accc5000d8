"""Where `casseat-edge bench convert` may write: an empty or new directory, or, with
`--overwrite`, one that holds a bench (its manifest says so), never the dataset being converted.

    problems = load_problems("MathVista/testmini.parquet")
    prepare_convert_out(problems, "bench-mathvista", overwrite=False)
    convert_problems(problems, "bench-mathvista")
"""

from __future__ import annotations

from pathlib import Path

from casseat_edge.artifacts import prepare_out_dir
from casseat_edge.errors import CasseatError
from casseat_edge.problems import ProblemSet


def prepare_convert_out(problems: ProblemSet, out: str | Path, overwrite: bool) -> Path:
    """Make `out` ready for `convert_problems`: refuse to replace a directory the source lives
    in (its images would be deleted before they are copied), then `prepare_out_dir`."""
    out = Path(out)
    target = out.resolve()
    for source in (Path(problems.source).resolve(), problems.root.resolve()):
        if source == target or source.is_relative_to(target):
            raise CasseatError(
                f"--out {out}: holds the dataset being converted ({problems.source}); "
                "convert into another directory"
            )
    return prepare_out_dir(out, overwrite, kind="bench")
