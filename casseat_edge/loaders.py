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
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from casseat_edge.artifacts import (
    atomic_path,
    parse_json_object,
    write_bytes_atomic,
    write_jsonl_atomic,
)
from casseat_edge.errors import DataError
from casseat_edge.problems import REQUIRED, ProblemSet, load_jsonl_problems, validate_rows

FORMATS = ("ours", "jsonl", "mathvista", "mathvision", "wemath", "mathverse")
OURS_FILE = "problems.jsonl"
# Fields a record must carry to be read as each format; auto-detection tries them in this order.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "mathverse": ("sample_index", "problem_version", "question", "answer", "question_type"),
    "wemath": ("ID", "option", "answer", "image_path", "key"),
    "mathvision": ("id", "question", "options", "answer"),
    "mathvista": REQUIRED,
}
# The question text of MathVerse "Vision Only" rows (the whole question is drawn in the image).
IMAGE_ONLY_QUESTION = "Answer the question shown in the image."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROBLEM_FIELDS = (
    "pid", "question", "image", "choices", "unit", "precision", "answer", "answer_type",
    "question_type", "metadata",
)  # fmt: skip
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}
_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")
_CHOICES_HEADER = re.compile(r"^[ \t]*choices[ \t]*[:：][ \t]*", re.IGNORECASE | re.MULTILINE)
_CHOICE_LINE = re.compile(r"^\s*\(?([A-Z])\s*[).:：]\s*(.*?)\s*$")
_IMAGE_PLACEHOLDER = re.compile(r"<image\d+>")
_PLACEHOLDER_BEFORE_PUNCT = re.compile(r"[ \t]*<image\d+>(?=[.,;:?!])")

Record = tuple[str, dict[str, Any]]


@dataclasses.dataclass
class _Source:
    """Where a dataset file lives and where its embedded images go."""

    path: Path
    root: Path
    image_rel: PurePosixPath
    extracted: int = 0

    @property
    def split(self) -> str:
        return self.path.stem.split("-")[0]


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
        return load_jsonl_problems(path, skip_invalid)
    first, records = _peek(path, _read_records(path))
    convert = _CONVERTERS[_resolve_format(path, fmt, first)]
    src = _source(path, image_dir)
    rows, failed = _convert_all(records, convert, src)
    root = src.root if src.extracted else _pick_root(path.parent, rows)
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
    first, _ = _peek(path, _read_records(path))
    return _resolve_format(path, "auto", first)


def convert_problems(problem_set: ProblemSet, out_dir: str | Path) -> Path:
    """Write `problem_set` in our layout: `out_dir/problems.jsonl` + `out_dir/images/<pid>.<ext>`.

    Every file is written atomically and `problems.jsonl` last, so a killed run never leaves a
    problems file pointing at missing images. Returns the path of `problems.jsonl`.
    """
    out_dir = Path(out_dir)
    rows = [_copy_image(problem_set, row, out_dir) for row in problem_set.rows]
    target = out_dir / OURS_FILE
    write_jsonl_atomic(target, rows)
    return target


# ---- files and records ------------------------------------------------------------------------


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
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    continue
                return isinstance(first, dict) and _detect(first) == "mathvista"
    return True


def _read_records(path: Path) -> Iterator[tuple[str, Any]]:
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
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                where = f"{path}:{lineno}"
                try:
                    yield where, parse_json_object(line, where)
                except DataError as exc:
                    yield where, exc


def _json_items(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


def _peek(path: Path, items: Iterator[tuple[str, Any]]) -> tuple[Record, Iterator[tuple[str, Any]]]:
    """The first readable record (to detect the format from) and all items, that one included."""
    seen = []
    for where, item in items:
        seen.append((where, item))
        if isinstance(item, dict):
            return (where, item), itertools.chain(seen, items)
    raise DataError(f"{path}: no readable records; is this the benchmark file you downloaded?")


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


def _source(path: Path, image_dir: str | Path | None) -> _Source:
    images = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    root = path.parent
    if not images.resolve().is_relative_to(root.resolve()):
        root = images.parent  # images must stay inside the root, so the root moves up to them
    rel = PurePosixPath(images.resolve().relative_to(root.resolve()).as_posix())
    return _Source(path=path, root=root, image_rel=rel)


def _convert_all(
    items: Iterable[tuple[str, Any]],
    convert: Callable[[dict[str, Any], _Source, str], dict[str, Any]],
    src: _Source,
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


def _pick_root(base: Path, rows: list[Record]) -> Path:
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


def _image(src: _Source, pid: str, where: str, *values: Any) -> Any:
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


def _extract(data: bytes, pid: str, src: _Source, where: str) -> str:
    rel = src.image_rel / f"{_safe_name(pid)}{_image_suffix(data, where)}"
    target = src.root / rel
    same = target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data
    if not same:
        write_bytes_atomic(target, data)
    src.extracted += 1
    return rel.as_posix()


def _image_suffix(data: bytes, where: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or ""
    except (UnidentifiedImageError, OSError):
        raise DataError(
            f"{where}: image: embedded bytes are not an image PIL can read; re-download the file"
        ) from None
    return _SUFFIXES.get(kind, f".{kind.lower()}")


def _safe_name(pid: str) -> str:
    """A file name for a pid; pids that needed changing get a hash so two cannot collide."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", pid).lstrip(".") or "_"
    return safe if safe == pid else f"{safe}-{hashlib.sha1(pid.encode()).hexdigest()[:8]}"


def _copy_image(problems: ProblemSet, row: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    source = problems.image_path(row)
    if source is None:
        return dict(row)
    if not source.is_file():
        raise DataError(
            f"{problems.source}: pid={row['pid']}: image: {source} is gone; load the dataset again"
        )
    suffix = source.suffix.lower() or _image_suffix(source.read_bytes(), f"pid={row['pid']}")
    rel = f"images/{_safe_name(row['pid'])}{suffix}"
    target = out_dir / rel
    if source.resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return {**row, "image": rel}


# ---- record -> problem row, one converter per format ------------------------------------------


def _get(record: dict[str, Any], field: str, where: str) -> Any:
    if record.get(field) is None:
        raise DataError(f"{where}: {field}: required field missing")
    return record[field]


def _from_mathvista(record: dict[str, Any], src: _Source, where: str) -> dict[str, Any]:
    """MathVista testmini (JSON keyed by pid, or HF parquet): already our fields."""
    if record.get("answer_type") == "list":
        raise DataError(
            f"{where}: answer_type: unsupported answer_type 'list' (list answers are not scored); "
            "pass skip_invalid to leave these rows out"
        )
    row = {field: record.get(field) for field in PROBLEM_FIELDS}
    row["pid"] = str(_get(record, "pid", where))
    row["image"] = _image(src, row["pid"], where, record.get("image"), record.get("decoded_image"))
    if isinstance(row["precision"], float) and row["precision"] != row["precision"]:
        row["precision"] = None  # parquet float64 column: NaN stands for null
    return row


def _from_mathvision(record: dict[str, Any], src: _Source, where: str) -> dict[str, Any]:
    """MATH-Vision: options [] (free form), ["A".."E"] (drawn in the image) or option texts."""
    pid = str(_get(record, "id", where))
    answer = str(_get(record, "answer", where)).strip()
    options = [str(option) for option in record.get("options") or []]
    row = _choice_row(options, answer, where) if options else _free_row(answer)
    subject = record.get("subject")
    metadata = {"source": "MATH-Vision", "split": src.split, "subject": subject}
    return row | {
        "pid": pid,
        "question": _strip_placeholders(str(record.get("question") or "")),
        "image": _image(src, pid, where, record.get("image"), record.get("decoded_image")),
        "metadata": metadata | {"level": record.get("level"), "family": subject},
    }


def _from_wemath(record: dict[str, Any], src: _Source, where: str) -> dict[str, Any]:
    """We-Math testmini: one `option` string "A. x;B. y; C. z", answer a letter; ID repeats
    across `key`s (one question split into steps), so the pid is ID@key."""
    pid = f"{_get(record, 'ID', where)}@{_get(record, 'key', where)}"
    choices = _split_lettered(str(_get(record, "option", where)), where)
    concept = record.get("knowledge concept")
    metadata = {
        "source": "We-Math",
        "split": record.get("split") or src.split,
        "key": record["key"],
        "knowledge_concept": concept,
        "question_number": record.get("question number"),
        "family": concept,
    }
    return _choice_row(choices, str(_get(record, "answer", where)), where) | {
        "pid": pid,
        "question": record.get("question"),
        "image": _image(src, pid, where, record.get("image_path")),
        "metadata": metadata,
    }


def _from_mathverse(record: dict[str, Any], src: _Source, where: str) -> dict[str, Any]:
    """MathVerse: question_type uses hyphens; multi-choice options are embedded in the question
    ("Choices:\\nA:40°\\nB:60°"); "Vision Only" rows have an empty question."""
    pid = str(_get(record, "sample_index", where))
    question_type = str(_get(record, "question_type", where)).replace("-", "_")
    question = str(record.get("question") or "").strip() or _question_from_query(record)
    answer = str(_get(record, "answer", where)).strip()
    if question_type == "multi_choice":
        question, choices = _embedded_choices(question)
        row = _choice_row(choices or _bare_letters(answer), answer, where)
    else:
        row = _free_row(answer) | {"question_type": question_type}
    meta = record.get("metadata") or {}
    metadata = {
        "source": "MathVerse",
        "split": meta.get("split") or src.split,
        "problem_version": record.get("problem_version"),
        "problem_index": record.get("problem_index"),
        "origin": meta.get("source"),
        "subject": meta.get("subject"),
        "subfield": meta.get("subfield"),
        "family": meta.get("subfield"),
    }
    image = _image(src, pid, where, record.get("image"))
    return row | {"pid": pid, "question": question, "image": image, "metadata": metadata}


_CONVERTERS = {
    "ours": _from_mathvista,
    "jsonl": _from_mathvista,
    "mathvista": _from_mathvista,
    "mathvision": _from_mathvision,
    "wemath": _from_wemath,
    "mathverse": _from_mathverse,
}


# ---- text helpers -----------------------------------------------------------------------------


def _free_row(answer: str) -> dict[str, Any]:
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


def _choice_row(choices: list[str], answer: str, where: str) -> dict[str, Any]:
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


def _bare_letters(answer: str) -> list[str]:
    """Options drawn in the image: letters A-D, or up to the answer's letter if it is later."""
    letter = answer.strip().strip("().").strip()
    count = LETTERS.index(letter) + 1 if len(letter) == 1 and letter in LETTERS else 0
    return list(LETTERS[: max(4, count)])


def _strip_placeholders(question: str) -> str:
    text = _IMAGE_PLACEHOLDER.sub(" ", _PLACEHOLDER_BEFORE_PUNCT.sub("", question))
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line) or IMAGE_ONLY_QUESTION


def _question_from_query(record: dict[str, Any]) -> str:
    """An empty MathVerse question: the query prompts hold "<instruction>\\nQuestion: <text>"."""
    for field in ("query_wo", "query_cot"):
        query = str(record.get(field) or "")
        if "Question:" in query and query.split("Question:", 1)[1].strip():
            return query.split("Question:", 1)[1].strip()
    return IMAGE_ONLY_QUESTION


def _embedded_choices(question: str) -> tuple[str, list[str]]:
    """Split "stem\\nChoices:\\nA:x\\nB:y" into (stem, [x, y]); (question, []) if not there."""
    header = _CHOICES_HEADER.search(question)
    if header is None:
        return question, []
    choices = []
    for line in question[header.end() :].splitlines():
        if not line.strip():
            continue
        match = _CHOICE_LINE.match(line)
        if match is None or match.group(1) != LETTERS[len(choices)]:
            return question, []
        choices.append(match.group(2))
    if len(choices) < 2:
        return question, []
    return question[: header.start()].strip() or IMAGE_ONLY_QUESTION, choices


def _split_lettered(text: str, where: str) -> list[str]:
    """We-Math's "A. 300, 400;B. 400, 300; C. 3000" -> option texts. Markers are found in letter
    order, after a ';' when possible, else after a space (the file has "A. 6cm B. 1cm ;C. 4cm")."""
    spans: list[tuple[int, int]] = []
    for letter in LETTERS:
        span = _find_marker(text, letter, spans[-1][1] if spans else 0)
        if span is None:
            break
        spans.append(span)
    if len(spans) < 2 or spans[0][0] != 0:
        raise DataError(f"{where}: option: cannot split {text!r} into options 'A. text; B. text'")
    ends = [start for start, _ in spans[1:]] + [len(text)]
    return [text[body:end].strip(" ;\t\n") for (_, body), end in zip(spans, ends, strict=True)]


def _find_marker(text: str, letter: str, pos: int) -> tuple[int, int] | None:
    for pattern in (rf"(?:^|;)\s*{letter}\s*\.\s*", rf"(?:^|\s){letter}\.\s+"):
        match = re.compile(pattern).search(text, pos)
        if match:
            return match.start(), match.end()
    return None
