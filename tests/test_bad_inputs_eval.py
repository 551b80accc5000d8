"""Issue 14, evaluations and exports: `--resume` of another run and two writers to one `--out`
(eval, export) are refused with one line (exit 2 / 1), and what is already there is left as it
was; a killed export leaves the previous one whole."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.artifacts import read_manifest, staged_out_dir, write_manifest
from casseat_edge.bench import BenchConfig, make_bench
from casseat_edge.errors import CasseatError


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    make_bench(BenchConfig(out=str(out), n=20, seed=3))
    return out


def evaluate(bench, out, *flags):
    args = ["eval", "--model", "tiny:llama", "--bench", str(bench), "--out", str(out)]
    return CliRunner().invoke(main, [*args, "--limit", "2", "--max-new-tokens", "3", *flags])


def one_error_line(result, code, *words):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    line = result.output.strip().splitlines()[-1]
    assert all(w in line for w in words), line


def test_resume_with_another_run_identity_is_refused(bench, tmp_path):
    out = tmp_path / "e"
    assert evaluate(bench, out).exit_code == 0
    before = (out / "results.jsonl").read_text()
    one_error_line(evaluate(bench, out, "--resume", "--policy", "cot"), 2, "--policy", "cot")
    one_error_line(evaluate(bench, out, "--resume", "--max-new-tokens", "4"), 2, "max-new-tokens")
    other = CliRunner().invoke(
        main,
        ["eval", "--model", "tiny:qwen2", "--bench", str(bench), "--out", str(out), "--resume",
         "--limit", "2", "--max-new-tokens", "3"],
    )  # fmt: skip
    one_error_line(other, 2, "--model", "tiny:qwen2")
    assert (out / "results.jsonl").read_text() == before
    # the same run resumes (a larger --limit adds rows; --bench given as another path is the same)
    again = evaluate(f"{bench}/../b", out, "--resume", "--limit", "3", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["n"] == 3
    # a directory with rows but no manifest: which run wrote it cannot be told
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.jsonl").write_text(before)
    one_error_line(evaluate(bench, foreign, "--resume"), 2, "casseat.json")


def hold_lock(out):
    """Another process writing to `out` (it holds the directory's lock until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from casseat_edge.locks import DirectoryLock\n"
         "with DirectoryLock(sys.argv[1]):\n print('locked', flush=True); time.sleep(60)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_to_one_out_is_refused(bench, tmp_path):
    out = tmp_path / "busy"
    holder = hold_lock(out)
    try:
        result = evaluate(bench, out)
        one_error_line(result, 1, str(out), f"pid {holder.pid}", "another --out")
        assert not (out / "results.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the directory is usable at once, the lock file is no content
    result = evaluate(bench, out)
    assert result.exit_code == 0, result.output


def test_a_second_export_to_one_out_is_refused(tmp_path):
    out = tmp_path / "gguf"
    args = ["export", "--model", "tiny:llama", "--format", "gguf", "--out", str(out)]
    first = CliRunner().invoke(main, [*args, "--quant", "f16"])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".gguf", ".json")}
    holder = hold_lock(out)
    try:
        second = CliRunner().invoke(main, [*args, "--quant", "q8_0", "--overwrite"])
        one_error_line(second, 1, str(out), f"pid {holder.pid}")
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".gguf", ".json")}
        assert after == before  # the other writer's files are untouched
    finally:
        holder.kill()
        holder.wait()
    again = CliRunner().invoke(main, [*args, "--quant", "q8_0", "--overwrite", "--json"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-q8_0.gguf"]


def model_files(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".gguf", ".json")}


def test_a_killed_export_leaves_the_previous_one_as_it_was(tmp_path):
    """Exports write into `out/.partial/` and move into place only when complete: SIGKILL in the
    middle (here: while llama.cpp verifies the new files) leaves the old files and manifest."""
    out = tmp_path / "gguf"
    args = ["export", "--model", "tiny:smolvlm", "--format", "gguf", "--out", str(out)]
    first = CliRunner().invoke(main, [*args, "--quant", "f16"])
    assert first.exit_code == 0, first.output
    before = model_files(out)
    second = subprocess.Popen(
        [sys.executable, "-m", "casseat_cli.cli", *args, "--quant", "q8_0", "--overwrite"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    staged = out / ".partial" / "model-q8_0.gguf"
    try:
        deadline = time.monotonic() + 120
        while not staged.exists() and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert staged.exists(), "the export never wrote its staged text model"
    finally:
        second.kill()
        second.wait()
    assert model_files(out) == before
    assert read_manifest(out, "export")["config"]["quant"] == "f16"
    # the next export clears the killed one's staging directory and replaces the old files
    again = CliRunner().invoke(main, [*args, "--quant", "q8_0", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".casseat.lock", "casseat.json", "model-q8_0.gguf", "mmproj-f16.gguf"]
    )


def test_staged_out_dir_publishes_only_a_complete_write(tmp_path):
    out = tmp_path / "a"
    with staged_out_dir(out) as stage:
        (stage / "weights.bin").write_text("one")
        write_manifest(stage, "export", {"n": 1})
    assert sorted(p.name for p in out.iterdir()) == ["casseat.json", "weights.bin"]
    with pytest.raises(RuntimeError), staged_out_dir(out, overwrite=True, kind="export") as stage:
        (stage / "weights.bin").write_text("two")
        raise RuntimeError("crashed half way")
    assert (out / "weights.bin").read_text() == "one" and not (out / ".partial").exists()
    # a move into place cut short (its marker left) is replaced with --overwrite, not without
    (out / "casseat.json").unlink()
    (out / ".swapping").touch()
    with pytest.raises(CasseatError, match="--overwrite"), staged_out_dir(out, kind="export"):
        pass
    with staged_out_dir(out, overwrite=True, kind="export") as stage:
        write_manifest(stage, "export", {"n": 3})
    assert sorted(p.name for p in out.iterdir()) == ["casseat.json"]
