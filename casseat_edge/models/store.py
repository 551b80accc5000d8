"""Where built models live: `$CASSEAT_HOME` (default `~/.cache/casseat-edge`).

Tiny models, the embedded SmolLM2 in HF form and its rebuilt tokenizer are built once and reused.
`materialize` builds into a temp directory and renames it into place, so a killed build never
leaves a half-written model that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from casseat_edge.artifacts import MANIFEST, read_manifest

READY_MARKER = MANIFEST


def casseat_home() -> Path:
    return Path(os.environ.get("CASSEAT_HOME", Path.home() / ".cache" / "casseat-edge"))


def materialize(target: Path, build: Callable[[Path], None], inputs: dict[str, str]) -> Path:
    """Return `target`, (re)building it with `build(tmp_dir)` unless it is complete and was built
    from the same `inputs` (source hashes, builder version).

    `build` must write `casseat.json` with those inputs last; its presence marks a complete
    directory."""
    if _built_from(target, inputs):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        if not (tmp / READY_MARKER).is_file():
            raise RuntimeError(f"builder for {target} did not write {READY_MARKER}")
        if target.exists():  # stale or incomplete, or a concurrent build that finished first
            if _built_from(target, inputs):
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _built_from(target: Path, inputs: dict[str, str]) -> bool:
    if not (target / READY_MARKER).is_file():
        return False
    try:
        return read_manifest(target).get("inputs") == inputs
    except Exception:  # noqa: BLE001 - an unreadable manifest means: rebuild
        return False
