"""Read the official benchmark files users download (MathVista, MATH-Vision, We-Math, MathVerse)
as problem sets in our format (`casseat_edge.problems`), and write any set back out in our layout.

`load_problems` reads the file as published (JSON object keyed by pid, JSON list, JSONL or Hugging
Face parquet), maps every record to a problem row and validates it with `validate_rows`, so each
error is one line `location: field: problem` where location is `file:12` (JSONL line or JSON
syntax error), `file:#3` (JSON list item), `file:pid=7` (JSON object entry) or `file:row 3`
(parquet row, 0-based). Images embedded in parquet are written once, named by pid, into
`<file stem>_images/` beside the file (or `image_dir`); every image path stays inside the root.

    problems = load_problems("MathVerse/testmini.json")        # format detected from the fields
    problems = load_problems("MATH-V/data/test.jsonl", skip_invalid=True)
    convert_problems(problems, "bench/mathv")                   # -> bench/mathv/problems.jsonl

Reading, locations and images live in `common`; each dataset's record -> row mapping (and the
fields that identify it, `SIGNATURE`) in its own module.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import (
    atomic_path,
    first_non_utf8_line,
    jsonl_lines,
    write_jsonl_atomic,
    write_manifest,
)
from casseat_edge.errors import DataError
from casseat_edge.loaders import mathverse, mathvision, mathvista, wemath
from casseat_edge.loaders.common import (
    IMAGE_ONLY_QUESTION,
    LETTERS,
    Converter,
    Record,
    Source,
    image_suffix,
    make_source,
    peek,
    pick_root,
    read_records,
    safe_name,
)
from casseat_edge.loaders.mathvista import PROBLEM_FIELDS
from casseat_edge.problems import ProblemSet, load_jsonl_problems, validate_rows

__all__ = [
    "FORMATS",
    "IMAGE_ONLY_QUESTION",
    "LETTERS",
    "OURS_FILE",
    "PROBLEM_FIELDS",
    "SIGNATURES",
    "SKIPPED_FILE",
    "convert_problems",
    "detect_format",
    "load_problems",
]

FORMATS = ("ours", "jsonl", "mathvista", "mathvision", "wemath", "mathverse")
OURS_FILE = "problems.jsonl"
SKIPPED_FILE = "skipped.jsonl"
# Fields a record must carry to be read as each format; auto-detection tries them in this order.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "mathverse": mathverse.SIGNATURE,
    "wemath": wemath.SIGNATURE,
    "mathvision": mathvision.SIGNATURE,
    "mathvista": mathvista.SIGNATURE,
}
_CONVERTERS: dict[str, Converter] = {
    "ours": mathvista.convert_record,
    "jsonl": mathvista.convert_record,
    "mathvista": mathvista.convert_record,
    "mathvision": mathvision.convert_record,
    "wemath": wemath.convert_record,
    "mathverse": mathverse.convert_record,
}
assert set(_CONVERTERS) == set(FORMATS), "every format needs a converter"


def load_problems(
    path: str | Path,
    fmt: str = "auto",
    skip_invalid: bool = False,
    image_dir: str | Path | None = None,
) -> ProblemSet:
    """Load a benchmark file (or a directory holding `problems.jsonl`) as a validated ProblemSet.

    `fmt="auto"` detects the format from the extension and the first record's fields. With
    `skip_invalid`, rows that cannot be read, converted or validated are left out and recorded in
    `ProblemSet.skipped`; otherwise the first bad row raises `DataError`.
    """
    path = _dataset_file(Path(path), fmt)
    ours = fmt in ("ours", "jsonl") or (fmt == "auto" and _is_ours_jsonl(path))
    if ours and path.suffix.lower() == ".jsonl":
        try:
            return load_jsonl_problems(path, skip_invalid)
        except UnicodeDecodeError:  # it reads text without line numbers: name the line here
            raise first_non_utf8_line(path) or DataError(f"{path}: not UTF-8 text") from None
    first, records = peek(path, read_records(path))
    convert = _CONVERTERS[_resolve_format(path, fmt, first)]
    src = make_source(path, image_dir)
    rows, failed = _convert_all(records, convert, src)
    root = src.root if src.extracted else pick_root(path.parent, rows)
    if failed and not skip_invalid:
        position, _, error, _ = failed[0]
        validate_rows(rows[:position], root, str(path), skip_invalid=False)  # file order
        raise error
    problems = validate_rows(rows, root, str(path), skip_invalid)
    problems.skipped[:0] = [{"where": w, "reason": str(e), "pid": p} for _, w, e, p in failed]
    return problems


def detect_format(path: str | Path) -> str:
    """Name the format `load_problems(path)` would read, without converting anything."""
    path = _dataset_file(Path(path), "auto")
    if _is_ours_jsonl(path):
        return "ours" if path.name == OURS_FILE else "jsonl"
    first, _ = peek(path, read_records(path))
    return _resolve_format(path, "auto", first)


def convert_problems(problem_set: ProblemSet, out_dir: str | Path) -> Path:
    """Write `problem_set` in our layout: `out_dir/problems.jsonl` + `out_dir/images/<pid>.<ext>`,
    the skipped rows (if any) in `out_dir/skipped.jsonl` and the manifest `out_dir/casseat.json`.

    Every file is written atomically, `problems.jsonl` after the images and the manifest last, so
    a killed run never leaves a problems file pointing at missing images, nor a manifest without
    its problems. Returns the path of `problems.jsonl`.
    """
    out_dir = Path(out_dir)
    rows = [_copy_image(problem_set, row, out_dir) for row in problem_set.rows]
    skipped = out_dir / SKIPPED_FILE
    if problem_set.skipped:
        write_jsonl_atomic(skipped, map(_skipped_line, problem_set.skipped))
    else:
        skipped.unlink(missing_ok=True)  # left by an earlier conversion into this directory
    target = out_dir / OURS_FILE
    write_jsonl_atomic(target, rows)
    write_manifest(
        out_dir,
        "bench",
        config={"source": problem_set.source},
        n=len(rows),
        counts=_count_problems(rows),
        skipped=len(problem_set.skipped),
    )
    return target


def _count_problems(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Problem counts per family, split and answer_type (sorted keys; a missing value: unknown)."""
    keys = {
        "family": lambda r: (r.get("metadata") or {}).get("family"),
        "split": lambda r: (r.get("metadata") or {}).get("split"),
        "answer_type": lambda r: r.get("answer_type"),
    }
    return {
        name: dict(sorted(Counter(_label(key(row)) for row in rows).items()))
        for name, key in keys.items()
    }


def _label(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _skipped_line(skipped: dict[str, Any]) -> dict[str, Any]:
    pid = skipped.get("pid")
    return {
        "where": skipped.get("where"),
        "reason": skipped.get("reason"),
        "pid": None if pid is None else str(pid),  # a parquet id may be any type; pids are text
    }


# ---- files and formats ------------------------------------------------------------------------


def _dataset_file(path: Path, fmt: str) -> Path:
    if fmt not in ("auto", *FORMATS):
        expected = ", ".join(("auto", *FORMATS))
        raise DataError(f"{path}: fmt: unknown format {fmt!r}; expected one of {expected}")
    if path.is_dir():
        if fmt not in ("auto", "ours", "jsonl") or not (path / OURS_FILE).is_file():
            raise DataError(
                f"{path}: is a directory without {OURS_FILE}; pass the dataset file itself "
                "(testmini.json, data/test.jsonl, data/testmini-*.parquet)"
            )
        return path / OURS_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; pass a dataset file or a directory with {OURS_FILE}"
        )
    return path


def _is_ours_jsonl(path: Path) -> bool:
    """A JSONL file whose first readable line has our fields (or none readable: let it report)."""
    if path.suffix.lower() != ".jsonl":
        return False
    for _, raw in jsonl_lines(path):
        try:
            first = json.loads(raw.decode("utf-8"))
        except ValueError:  # malformed JSON or not UTF-8: reading the file reports it
            continue
        return isinstance(first, dict) and _detect(first) == "mathvista"
    return True


def _detect(record: dict[str, Any]) -> str | None:
    for name, fields in SIGNATURES.items():
        if all(field in record for field in fields):
            return name
    return None


def _resolve_format(path: Path, fmt: str, first: Record) -> str:
    where, record = first
    detected = _detect(record)
    if fmt == "auto":
        if detected is None:
            fields = ", ".join(sorted(record)[:12])
            raise DataError(
                f"{where}: cannot tell the format from its fields ({fields}); "
                f"pass fmt= one of {', '.join(FORMATS)}"
            )
        return detected
    expected = SIGNATURES["mathvista" if fmt in ("ours", "jsonl") else fmt]
    missing = [field for field in expected if field not in record]
    if missing:
        raise DataError(
            f"{where}: {missing[0]}: field missing for format {fmt!r} (the fields look like "
            f"{detected or 'no known format'}); pass the matching fmt or fmt='auto'"
        )
    return fmt


# ---- record -> row ----------------------------------------------------------------------------


def _convert_all(
    items: Iterable[tuple[str, Any]], convert: Converter, src: Source
) -> tuple[list[Record], list[tuple[int, str, DataError, Any]]]:
    """Converted rows, and failures (rows before it, where, error, pid) to report in order."""
    rows, failed = [], []
    for where, item in items:
        try:
            if isinstance(item, DataError):
                raise item
            rows.append((where, convert(item, src, where)))
        except DataError as exc:
            failed.append((len(rows), where, exc, _record_pid(item)))
    return rows, failed


def _record_pid(item: Any) -> Any:
    keys = ("pid", "id", "sample_index", "ID")
    return next((item[k] for k in keys if k in item), None) if isinstance(item, dict) else None


def _copy_image(problems: ProblemSet, row: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    source = problems.image_path(row)
    if source is None:
        return dict(row)
    if not source.is_file():
        raise DataError(
            f"{problems.source}: pid={row['pid']}: image: {source} is gone; load the dataset again"
        )
    suffix = source.suffix.lower() or image_suffix(source.read_bytes(), f"pid={row['pid']}")
    rel = f"images/{safe_name(row['pid'])}{suffix}"
    target = out_dir / rel
    if source.resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return {**row, "image": rel}
