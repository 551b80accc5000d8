"""MathVista testmini (`testmini.json` keyed by pid, or the HF parquet): records already carry our
problem fields, so conversion picks them, writes out an embedded `decoded_image`, and names the
row's family (`metadata.task`, else `metadata.category`) for accuracy by family.

Our own format read from a file that is not `problems.jsonl` goes through here too.
"""

from __future__ import annotations

from typing import Any

from casseat_edge.errors import DataError
from casseat_edge.loaders.common import Source, get_field, image
from casseat_edge.problems import REQUIRED

SIGNATURE = REQUIRED
PROBLEM_FIELDS = (
    "pid", "question", "image", "choices", "unit", "precision", "answer", "answer_type",
    "question_type", "metadata",
)  # fmt: skip
DEFAULT_FAMILY = "mathvista"


def convert_record(record: dict[str, Any], src: Source, where: str) -> dict[str, Any]:
    """MathVista testmini (JSON keyed by pid, or HF parquet): already our fields."""
    if record.get("answer_type") == "list":
        raise DataError(
            f"{where}: answer_type: unsupported answer_type 'list' (list answers are not scored); "
            "pass skip_invalid to leave these rows out"
        )
    row = {field: record.get(field) for field in PROBLEM_FIELDS}
    row["pid"] = str(get_field(record, "pid", where))
    row["image"] = image(src, row["pid"], where, record.get("image"), record.get("decoded_image"))
    if isinstance(row["precision"], float) and row["precision"] != row["precision"]:
        row["precision"] = None  # parquet float64 column: NaN stands for null
    if row["metadata"] is None or isinstance(row["metadata"], dict):
        row["metadata"] = _with_family(row["metadata"] or {})
    return row


def _with_family(metadata: dict[str, Any]) -> dict[str, Any]:
    """A family that is already there (our own format) is kept; MathVista names none."""
    family = (
        metadata.get("family") or metadata.get("task") or metadata.get("category") or DEFAULT_FAMILY
    )
    return {**metadata, "family": family}
