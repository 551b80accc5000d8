"""The entry point re-executes `train` and `pipeline` under mimalloc (casseat_cli.launch): which
commands, the off switch, no loop, and a real `casseat-edge` process that ends up on it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from casseat_edge.allocator import allocator_env, allocator_in_use, mimalloc_library

needs_mimalloc = pytest.mark.skipif(
    sys.platform != "linux" or mimalloc_library() is None,
    reason="cmeel-mimalloc is installed on Linux only (pyproject.toml)",
)


@needs_mimalloc
def test_training_commands_get_mimalloc_preloaded_and_told_to_keep_memory():
    library = str(mimalloc_library())
    for argv in (["train", "--config", "c.yaml"], ["--debug", "pipeline"], ["-q", "train"]):
        env = allocator_env(argv, {"PATH": "/bin"})
        assert env is not None, argv
        assert env["LD_PRELOAD"] == library and env["MIMALLOC_PURGE_DELAY"] == "-1"
        assert env["PATH"] == "/bin" and env["CASSEAT_ALLOCATOR"] == "mimalloc"
    # a preload the user had stays, after ours; their own mimalloc settings win
    env = allocator_env(["train"], {"LD_PRELOAD": "/x/libfoo.so", "MIMALLOC_PURGE_DELAY": "10"})
    assert env["LD_PRELOAD"] == f"{library} /x/libfoo.so" and env["MIMALLOC_PURGE_DELAY"] == "10"


@needs_mimalloc
def test_other_commands_the_off_switch_and_a_second_pass_run_as_they_are():
    assert allocator_env(["eval", "--model", "train"], {}) is None  # `train` is a value here
    assert allocator_env(["export", "--format", "gguf"], {}) is None
    assert allocator_env(["--help"], {}) is None and allocator_env([], {}) is None
    assert allocator_env(["train"], {"CASSEAT_ALLOCATOR": "system"}) is None
    # already re-executed: no loop
    env = allocator_env(["train"], {})
    assert allocator_env(["train"], env) is None


@needs_mimalloc
def test_the_command_runs_on_mimalloc_and_not_with_the_switch_off():
    # a real process through the entry point; `train --help` needs no config. The probe prints
    # which allocator the process has mapped, then hands over to the entry point, which
    # re-executes the same command line (so the probe prints again, from the new image)
    probe = (
        "from casseat_cli.launch import entry; "
        "from casseat_edge.allocator import allocator_in_use; "
        "print(allocator_in_use(), flush=True); entry()"
    )
    for setting, expected in (("mimalloc", "mimalloc"), ("system", "system")):
        done = subprocess.run(
            [sys.executable, "-c", probe, "train", "--help"],
            capture_output=True,
            text=True,
            env={**_environ(), "CASSEAT_ALLOCATOR": setting},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.splitlines()
        # first pass (before the exec): glibc; the re-executed process: what was asked for
        assert lines[0] == "system", lines[:3]
        if expected == "mimalloc":
            assert lines[1] == "mimalloc" and "Usage:" in done.stdout
        else:
            assert lines[1].startswith("Usage:")
    assert allocator_in_use() == "system"  # pytest itself is not re-executed


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CASSEAT_ALLOCATOR")}
