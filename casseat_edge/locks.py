"""One writer per output directory: `with DirectoryLock(out): ...` holds an exclusive `flock` on
`out/.casseat.lock` for the duration, so a second process writing to the same `--out` (a second
`eval`, `export`, ...) stops at once with one line instead of interleaving its files with the
first's. The lock dies with its process (a killed run can be resumed at once); the empty lock file
stays and is not counted as content (`is_empty`). A directory the lock created and nothing was
written to (the command failed its checks) is removed again on exit."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from casseat_edge.errors import CasseatError

LOCK_FILE = ".casseat.lock"
STAGING_DIR = ".partial"  # where an export writes before its files move into place (artifacts.py)
BOOKKEEPING = (LOCK_FILE, STAGING_DIR)


class DirectoryBusyError(CasseatError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> DirectoryLock:
        self._created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryBusyError(
                f"{self.directory} is being written by another casseat-edge process (pid "
                f"{holder}); wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is None:
            return
        if (
            self._created
            and is_empty(self.directory)
            and not (self.directory / STAGING_DIR).exists()
        ):
            (self.directory / LOCK_FILE).unlink(missing_ok=True)
            self.directory.rmdir()
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def is_empty(directory: str | Path) -> bool:
    """No entries but (possibly) our lock file and a killed export's staging directory."""
    return all(p.name in BOOKKEEPING for p in Path(directory).iterdir())
