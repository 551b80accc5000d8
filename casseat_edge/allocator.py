"""mimalloc for the commands that train with PyTorch: where it is, whether a command should be
re-executed under it, and whether this process runs on it. `casseat_cli.launch.entry` (the
`casseat-edge` entry point) does the re-executing; why, and what it buys, is said there.
"""

from __future__ import annotations

import sys
from pathlib import Path

# the commands whose work is PyTorch training (the pipeline trains its students in-process)
TRAINING_COMMANDS = ("train", "pipeline")
ENV = "CASSEAT_ALLOCATOR"
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1"}


def mimalloc_library() -> Path | None:
    """libmimalloc.so from the `cmeel-mimalloc` wheel, or None where it is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution("cmeel-mimalloc")
    except metadata.PackageNotFoundError:
        return None
    for name in dist.files or []:
        if Path(str(name)).name.startswith("libmimalloc.so."):
            path = Path(str(dist.locate_file(name)))
            if path.is_file():
                return path
    return None


def allocator_env(argv: list[str], environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute `argv` (the arguments after the program) with, or None to
    run as is: not a training command, already preloaded, turned off, or no mimalloc here."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in TRAINING_COMMANDS or sys.platform != "linux":
        return None
    if environ.get(ENV, "mimalloc") != "mimalloc" or "mimalloc" in environ.get("LD_PRELOAD", ""):
        return None
    library = mimalloc_library()
    if library is None:
        return None
    preload = " ".join(p for p in (str(library), environ.get("LD_PRELOAD", "")) if p)
    return {**MIMALLOC_SETTINGS, **environ, "LD_PRELOAD": preload, ENV: "mimalloc"}


def allocator_in_use() -> str:
    """'mimalloc' when this process has it mapped (preloaded), else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"
