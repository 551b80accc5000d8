"""The problem format (MathVista testmini fields), its validator and the JSONL reader.

One JSON object per line in `problems.jsonl`; `image` is a path relative to the file's directory
(the dataset root) and may not escape it. A bad row raises `DataError("file:line: field: problem")`
unless `skip_invalid` is set, in which case it is skipped and recorded.

    problems = load_jsonl_problems("bench/problems.jsonl")
    problems.rows[0]["answer"]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from casseat_edge.answers import MAX_PRECISION, check_precision
from casseat_edge.artifacts import jsonl_lines, parse_json_object
from casseat_edge.errors import DataError

ANSWER_TYPES = ("integer", "float", "text", "multi_choice")
QUESTION_TYPES = ("multi_choice", "free_form")
REQUIRED = ("pid", "question", "answer", "answer_type", "question_type")
MAX_QUESTION_CHARS = 8000


@dataclasses.dataclass
class ProblemSet:
    """Validated problems, the dataset root images are relative to, and rows that were skipped."""

    rows: list[dict[str, Any]]
    root: Path
    source: str
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def image_path(self, row: dict[str, Any]) -> Path | None:
        return self.root / row["image"] if row.get("image") else None

    def split(self, name: str) -> ProblemSet:
        rows = [r for r in self.rows if r.get("metadata", {}).get("split") == name]
        return dataclasses.replace(self, rows=rows)


def normalize_problem(row: dict[str, Any]) -> dict[str, Any]:
    """Fill optional fields with their defaults and coerce types a JSON writer may have changed."""
    out = dict(row)
    out["pid"] = str(out["pid"])
    out.setdefault("image", None)
    out.setdefault("choices", None)
    out.setdefault("unit", None)
    out.setdefault("precision", None)
    out["metadata"] = dict(out.get("metadata") or {})
    if isinstance(out["answer"], (int, float)) and not isinstance(out["answer"], bool):
        out["answer"] = _number_text(out["answer"])
    if isinstance(out["precision"], float) and out["precision"].is_integer():
        out["precision"] = int(out["precision"])
    return out


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def validate_problem(row: dict[str, Any], root: Path | None, where: str) -> dict[str, Any]:
    """Return the normalized problem or raise `DataError` naming `where: field: problem`."""
    missing = [f for f in REQUIRED if f not in row or row[f] is None]
    if missing:
        raise DataError(
            f"{where}: {missing[0]}: required field missing (required: {', '.join(REQUIRED)})"
        )
    row = normalize_problem(row)
    _check_types(row, where)
    _check_choices(row, where)
    if root is not None and row["image"]:
        check_image_path(root, row["image"], where)
    return row


def _check_types(row: dict[str, Any], where: str) -> None:
    if row["answer_type"] not in ANSWER_TYPES:
        raise DataError(
            f"{where}: answer_type: unknown value {row['answer_type']!r}; "
            f"expected one of {', '.join(ANSWER_TYPES)}"
        )
    if row["question_type"] not in QUESTION_TYPES:
        raise DataError(
            f"{where}: question_type: unknown value {row['question_type']!r}; "
            f"expected one of {', '.join(QUESTION_TYPES)}"
        )
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise DataError(f"{where}: question: must be a non-empty string")
    if len(row["question"]) > MAX_QUESTION_CHARS:
        raise DataError(
            f"{where}: question: {len(row['question'])} characters, over {MAX_QUESTION_CHARS}"
        )
    if not isinstance(row["answer"], str) or not row["answer"].strip():
        raise DataError(f"{where}: answer: must be a non-empty string or number")
    try:
        precision = row["precision"] = check_precision(row["precision"])
    except ValueError as exc:
        raise DataError(f"{where}: precision: {exc}") from None
    if row["answer_type"] == "float" and precision is None:
        # an answer written with more decimals than a double holds is compared at MAX_PRECISION
        row["precision"] = min(_decimals(row["answer"]), MAX_PRECISION)
    if row["answer_type"] in ("integer", "float") and not _is_number(row["answer"]):
        raise DataError(
            f"{where}: answer: {row['answer']!r} is not a number but answer_type is {row['answer_type']}"
        )
    if row["image"] is not None and not isinstance(row["image"], str):
        raise DataError(f"{where}: image: expected a relative path string or null")


def _check_choices(row: dict[str, Any], where: str) -> None:
    choices = row["choices"]
    if row["question_type"] == "multi_choice":
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(
                f"{where}: choices: a multi_choice question needs a list of at least 2 choices"
            )
        if not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: choices: every choice must be a string")
        if row["answer"] not in choices:
            raise DataError(
                f"{where}: answer: {row['answer']!r} is not one of the choices {choices}"
            )
    elif choices not in (None, []):
        raise DataError(f"{where}: choices: a free_form question must have choices null")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text.replace(",", "")))
    except ValueError:
        return False


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def check_image_path(root: Path, rel: str, where: str, must_exist: bool = True) -> Path:
    """Resolve `rel` under `root`; refuse absolute paths and anything that escapes the root."""
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")):
        raise DataError(
            f"{where}: image: {rel!r} is absolute; image paths must be relative to {root}"
        )
    root_real = root.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root_real):
        raise DataError(
            f"{where}: image: {rel!r} escapes the dataset root {root}; keep images inside it"
        )
    if must_exist and not target.is_file():
        raise DataError(f"{where}: image: file {rel!r} not found under {root}")
    return target


def validate_rows(
    rows: list[tuple[str, dict[str, Any]]], root: Path, source: str, skip_invalid: bool
) -> ProblemSet:
    """Validate (where, row) pairs; duplicate pids are errors. Skipped rows keep their reason."""
    good, skipped, seen = [], [], set()
    for where, row in rows:
        try:
            problem = validate_problem(row, root, where)
            if problem["pid"] in seen:
                raise DataError(
                    f"{where}: pid: duplicate pid {problem['pid']!r}; pids must be unique"
                )
        except DataError as exc:
            if not skip_invalid:
                raise
            skipped.append({"where": where, "reason": str(exc), "pid": row.get("pid")})
            continue
        seen.add(problem["pid"])
        good.append(problem)
    return ProblemSet(rows=good, root=root, source=source, skipped=skipped)


def load_jsonl_problems(path: str | Path, skip_invalid: bool = False) -> ProblemSet:
    """Read our `problems.jsonl` (or any JSONL in the problem format)."""
    path = Path(path)
    rows, unreadable = [], []
    for lineno, raw in jsonl_lines(path):
        where = f"{path}:{lineno}"
        try:
            rows.append((where, parse_json_object(raw, where)))
        except DataError as exc:
            if not skip_invalid:
                raise
            unreadable.append({"where": where, "reason": str(exc), "pid": None})
    problems = validate_rows(rows, path.parent, str(path), skip_invalid)
    problems.skipped[:0] = unreadable
    return problems
