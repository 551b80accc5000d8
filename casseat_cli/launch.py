"""The `casseat-edge` entry point: the commands that train with PyTorch start under mimalloc.

PyTorch training on the CPU allocates and frees gigabytes every step, and glibc's malloc hands
large blocks back to the kernel and maps them again: 4.0 M minor page faults in 12 steps of the
student recipe. mimalloc, told to keep what it frees (MIMALLOC_PURGE_DELAY=-1), reuses them:
0.22 M faults, 1.16x the tokens/s, 6.7 instead of 8.6 GiB peak RSS and the same loss
(`python3 benchmarks/train_allocator.py --run OUT --repeats 2`, OUT a finished main job).

A preloaded allocator has to be there when the process starts, so `train` and `pipeline`
re-execute themselves once with it in LD_PRELOAD, on Linux, where the `cmeel-mimalloc` wheel is
a dependency. `CASSEAT_ALLOCATOR=system` keeps glibc's. Commands run in-process (click's test
runner, `main()` from Python) never re-execute.
"""

from __future__ import annotations

import os
import sys

from casseat_edge.allocator import allocator_env


def entry() -> None:
    """`casseat-edge` and `python -m casseat_cli`."""
    env = allocator_env(sys.argv[1:], dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    from casseat_cli.cli import main

    main(prog_name="casseat-edge")
