"""Issue 14, evaluations and exports: `--resume` of another run and two writers to one `--out`
(eval, export) are refused with one line (exit 2 / 1), and what is already there is left as it
was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from casseat_edge.bench import BenchConfig, make_bench
from casseat_edge.cli import main


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
