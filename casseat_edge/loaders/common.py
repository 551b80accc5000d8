"""What every dataset loader shares: reading records with their locations, where images go,
extracting embedded images, and building choice/free-form problem rows.

`read_records` yields `(location, record)` pairs from JSON, JSONL or parquet, where location is
`file:12` (JSONL line), `file:#3` (JSON list item), `file:pid=7` (JSON object entry) or
`file:row 3` (parquet row, 0-based); an unreadable item comes as its `DataError`, in file order.
The per-dataset modules turn one record into one problem row with `image`, `choice_row` and
`free_row`; `casseat_edge.loaders` puts them together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from casseat_edge.answers import LETTERS
from casseat_edge.artifacts import jsonl_lines, parse_json_object, write_bytes_atomic
from casseat_edge.errors import DataError

# The question text of rows whose whole question is drawn in the image (MathVerse "Vision Only").
IMAGE_ONLY_QUESTION = "Answer the question shown in the image."
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}
_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")

Record = tuple[str, dict[str, Any]]


@dataclasses.dataclass
class Source:
    """Where a dataset file lives and where its embedded images go."""

    path: Path
    root: Path
    image_rel: PurePosixPath
    extracted: int = 0

    @property
    def split(self) -> str:
        return self.path.stem.split("-")[0]


# A dataset module's `convert_record(record, src, where)`: one record -> one problem row.
Converter = Callable[[dict[str, Any], Source, str], dict[str, Any]]


def make_source(path: Path, image_dir: str | Path | None) -> Source:
    images = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    root = path.parent
    if not images.resolve().is_relative_to(root.resolve()):
        root = images.parent  # images must stay inside the root, so the root moves up to them
    rel = PurePosixPath(images.resolve().relative_to(root.resolve()).as_posix())
    return Source(path=path, root=root, image_rel=rel)


# ---- files and records ------------------------------------------------------------------------


def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs; an unreadable item comes as its `DataError` to report in order."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_records(path)
        return
    if suffix == ".jsonl":
        items: Iterable[tuple[str, Any]] = _jsonl_items(path)
    elif suffix == ".json":
        items = _json_items(path)
    else:
        raise DataError(
            f"{path}: unknown extension {path.suffix!r}; expected .json, .jsonl or .parquet"
        )
    for where, item in items:
        if not isinstance(item, (dict, DataError)):
            item = DataError(f"{where}: expected a JSON object, found {type(item).__name__}")
        yield where, item


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, raw in jsonl_lines(path):
        where = f"{path}:{lineno}"
        try:
            yield where, parse_json_object(raw, where)
        except DataError as exc:
            yield where, exc


def _json_items(path: Path) -> Iterator[tuple[str, Any]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); re-download the file "
            "or re-save it as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
            "re-download or fix the file"
        ) from None
    if isinstance(data, list):
        yield from ((f"{path}:#{i}", item) for i, item in enumerate(data))
    elif isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        yield from ((f"{path}:pid={key}", {"pid": key, **item}) for key, item in data.items())
    else:
        raise DataError(f"{path}: expected a JSON list of records or an object keyed by pid")


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc}); re-download it") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=64):  # batches: embedded images stay small in RAM
        for record in batch.to_pylist():
            yield f"{path}:row {index}", record
            index += 1


def peek(path: Path, items: Iterator[tuple[str, Any]]) -> tuple[Record, Iterator[tuple[str, Any]]]:
    """The first readable record (to detect the format from) and all items, that one included."""
    seen = []
    for where, item in items:
        seen.append((where, item))
        if isinstance(item, dict):
            return (where, item), itertools.chain(seen, items)
    raise DataError(f"{path}: no readable records; is this the benchmark file you downloaded?")


def pick_root(base: Path, rows: list[Record]) -> Path:
    """MATH-Vision keeps `data/test.jsonl` beside `images/`: paths are relative to the file's
    parent directory there. Use the first of (file dir, its parent) where the images exist."""
    rels = [row["image"] for _, row in rows if _plain_relative(row.get("image"))][:20]
    for root in (base, base.parent):
        if any((root / rel).is_file() for rel in rels):
            return root
    return base


def _plain_relative(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")):
        return False
    return not PurePosixPath(rel).is_absolute() and ".." not in PurePosixPath(rel).parts


# ---- images -----------------------------------------------------------------------------------


def image(src: Source, pid: str, where: str, *values: Any) -> Any:
    """The row's image: embedded bytes (HF Image struct) are written out; else the first path."""
    for value in values:
        if isinstance(value, dict) and value.get("bytes"):
            return _extract(value["bytes"], pid, src, where)
    for value in values:
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str) and path.strip():
            return path.strip()
        if path is not None and not isinstance(path, str):
            return path  # not a path at all: validation reports it
    return None


def _extract(data: bytes, pid: str, src: Source, where: str) -> str:
    # the content hash in the name: two rows with one pid (a duplicate that validation will
    # report) never overwrite each other's image, and an existing file is already complete
    digest = hashlib.sha256(data).hexdigest()[:12]
    rel = src.image_rel / f"{safe_name(pid)}-{digest}{image_suffix(data, where)}"
    target = src.root / rel
    if not target.is_file():
        write_bytes_atomic(target, data)
    src.extracted += 1
    return rel.as_posix()


def image_suffix(data: bytes, where: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind = opened.format or ""
    except (UnidentifiedImageError, OSError):
        raise DataError(
            f"{where}: image: embedded bytes are not an image PIL can read; re-download the file"
        ) from None
    return _SUFFIXES.get(kind, f".{kind.lower()}")


def safe_name(pid: str) -> str:
    """A file name for a pid; pids that needed changing get a hash so two cannot collide."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", pid).lstrip(".") or "_"
    return safe if safe == pid else f"{safe}-{hashlib.sha1(pid.encode()).hexdigest()[:8]}"


# ---- problem rows -----------------------------------------------------------------------------


def get_field(record: dict[str, Any], field: str, where: str) -> Any:
    if record.get(field) is None:
        raise DataError(f"{where}: {field}: required field missing")
    return record[field]


def free_row(answer: str) -> dict[str, Any]:
    if _INTEGER.fullmatch(answer):
        answer_type, precision = "integer", None
    elif _FLOAT.fullmatch(answer):
        answer_type, precision = "float", len(answer.split(".", 1)[1])
    else:
        answer_type, precision = "text", None
    return dict(
        question_type="free_form",
        answer_type=answer_type,
        answer=answer,
        choices=None,
        precision=precision,
        unit=None,
    )


def choice_row(choices: list[str], answer: str, where: str) -> dict[str, Any]:
    answer = _letter_to_choice(answer, choices, where)
    return dict(
        question_type="multi_choice",
        answer_type="multi_choice",
        answer=answer,
        choices=choices,
        precision=None,
        unit=None,
    )


def _letter_to_choice(answer: str, choices: list[str], where: str) -> str:
    letter = answer.strip().strip("().").strip()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return choices[LETTERS.index(letter)]
    if answer in choices:
        return answer
    raise DataError(
        f"{where}: answer: {answer!r} is neither an option letter A-{LETTERS[len(choices) - 1]} "
        f"nor one of the choices {choices}"
    )
