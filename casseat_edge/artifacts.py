"""Artifact directories, manifests and crash-safe writes.

Every stage writes its outputs into a directory with a `casseat.json` manifest (kind, resolved
config, package versions, input hashes, sizes, metrics); the next stage reads it instead of asking
again. Files are written atomically (temp file + rename) and JSONL outputs are appended one flushed
line at a time, so a killed job leaves nothing half-written and can resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from casseat_edge import __version__
from casseat_edge.errors import CasseatError, DataError
from casseat_edge.locks import BOOKKEEPING, LOCK_FILE, STAGING_DIR, is_empty

MANIFEST = "casseat.json"
TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "gguf", "llama_cpp_python", "pillow")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed over `path` (same filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


class JsonlAppender:
    """Append-only JSONL writer: one line per record, flushed and fsynced, for resumable jobs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """A job killed mid-write can leave a last line without its newline: cut it off."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)


def decode_line(raw: bytes, where: str) -> str:
    """One line of a text file as UTF-8, or a `DataError` naming `where` and the bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "re-save the file as UTF-8"
        ) from None


def parse_json_object(line: str | bytes, where: str) -> dict[str, Any]:
    """One JSONL line -> object, or a `DataError` naming `where` (usually `file:line`)."""
    if isinstance(line, bytes):
        line = decode_line(line, where)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON ({exc.msg}); fix or remove the line") from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit conversion limit
        reason = str(exc).splitlines()[0]
        raise DataError(
            f"{where}: unreadable JSON value ({reason}); fix or remove the line"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    return obj


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each non-blank line. Bytes, not text: a line that is not
    UTF-8 is then reported with its own line number (`decode_line`), not as a decoder traceback."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                yield lineno, raw


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-empty line; a malformed or non-UTF-8 line is a
    `DataError` naming `file:line`."""
    for lineno, raw in jsonl_lines(path):
        yield lineno, parse_json_object(raw, f"{path}:{lineno}")


def first_non_utf8_line(path: str | Path) -> DataError | None:
    """The `DataError` of the first line of `path` that is not UTF-8 (None when all are): for
    callers that read a file as text and met a `UnicodeDecodeError` without a line number."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                decode_line(raw, f"{path}:{lineno}")
            except DataError as exc:
                return exc
    return None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def stable_fraction(key: str) -> float:
    """A number in [0, 1) from a string, the same on every machine and Python run (for splits)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def dir_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def package_versions() -> dict[str, str]:
    versions = {"casseat-edge": __version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def write_manifest(
    out_dir: str | Path,
    kind: str,
    config: dict[str, Any],
    inputs: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write `casseat.json` in `out_dir` and return it."""
    manifest = {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "versions": package_versions(),
        "inputs": inputs or {},
        **extra,
    }
    write_json_atomic(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read the manifest of an artifact directory; `kind` checks what the directory holds."""
    file = Path(path) / MANIFEST if Path(path).is_dir() else Path(path)
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise CasseatError(
            f"{file}: no manifest; is {path} a casseat-edge artifact directory?"
        ) from None
    except json.JSONDecodeError as exc:
        raise CasseatError(
            f"{file}: malformed manifest ({exc.msg}); re-create the artifact"
        ) from None
    except UnicodeDecodeError:
        raise CasseatError(f"{file}: manifest is not UTF-8 text; re-create the artifact") from None
    if kind is not None and manifest.get("kind") != kind:
        raise CasseatError(f"{path}: expected a {kind!r} artifact, found {manifest.get('kind')!r}")
    return manifest


def prepare_out_dir(
    path: str | Path,
    overwrite: bool = False,
    kind: str | None = None,
    interrupted: Callable[[Path], bool] | None = None,
) -> Path:
    """Create an empty output directory. A non-empty one is replaced only with `overwrite`, and
    only when it is an artifact of `kind` (its manifest says so) or, with `interrupted`, an
    unfinished run that predicate recognises: never an arbitrary folder."""
    path = Path(path)
    if check_out_dir(path, overwrite, kind, interrupted):
        for child in path.iterdir():  # a writer's lock (casseat_edge.locks) stays held
            if child.name != LOCK_FILE:
                _remove(child)
    path.mkdir(parents=True, exist_ok=True)
    return path


SWAP_MARKER = ".swapping"  # present only while staged files move into place


@contextlib.contextmanager
def staged_out_dir(
    path: str | Path, overwrite: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Write an artifact all at once: `with staged_out_dir(out, overwrite, "export") as stage:`
    checks `out` as `prepare_out_dir` does, yields an empty `out/.partial/` to write everything
    into (manifest included), and only when the block succeeds replaces `out`'s old contents with
    it (the old manifest goes first, the new one last; a rename each). A failed or interrupted
    write leaves `out` as it was: no half-written model beside an old manifest that says passed.
    Hold the directory's `DirectoryLock` around it."""
    path = Path(path)
    check_out_dir(path, overwrite, kind, interrupted=lambda p: (p / SWAP_MARKER).exists())
    stage = path / STAGING_DIR
    path.mkdir(parents=True, exist_ok=True)
    _remove(stage)  # a killed run's
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        _remove(stage)
        raise
    _swap_in(path, stage)


def _swap_in(path: Path, stage: Path) -> None:
    marker = path / SWAP_MARKER
    marker.touch()
    old = sorted(path.iterdir(), key=lambda p: p.name != MANIFEST)  # the manifest first
    for child in old:
        if child.name not in (*BOOKKEEPING, SWAP_MARKER):
            _remove(child)
    for child in sorted(stage.iterdir(), key=lambda p: p.name == MANIFEST):  # the manifest last
        child.rename(path / child.name)
    stage.rmdir()
    marker.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_out_dir(
    path: str | Path,
    overwrite: bool = False,
    kind: str | None = None,
    interrupted: Callable[[Path], bool] | None = None,
) -> bool:
    """`prepare_out_dir`'s checks without touching anything (to fail before long work):
    True when `path` holds something `prepare_out_dir` would replace, False when it is absent or
    empty; a directory it may not replace raises `CasseatError`."""
    path = Path(path)
    if not path.exists():
        return False
    if not path.is_dir():
        raise CasseatError(f"{path} is a file, not a directory; choose another --out")
    if is_empty(path):
        return False
    if not overwrite:
        raise CasseatError(
            f"{path} already exists and is not empty; delete it, pass --overwrite, "
            "or choose another --out"
        )
    found = _manifest_kind(path)
    if kind is not None and found != kind and not (interrupted and interrupted(path)):
        raise CasseatError(
            f"{path} is not a casseat-edge {kind} directory (its manifest kind: {found}); "
            "--overwrite only replaces those: delete it yourself or choose another --out"
        )
    return True


def _manifest_kind(path: Path) -> str | None:
    try:
        return json.loads((path / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
