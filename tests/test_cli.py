"""The CLI contract: help that teaches, --json that parses, exit codes, one clear line per bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from casseat_cli.cli import main


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.stderr if result.stderr_bytes else "")
    return result


def test_help_lists_commands():
    out = run("--help").output
    for command in ("bench", "list", "score", "inspect"):
        assert command in out


def test_list_archs_json_parses():
    doc = json.loads(run("list", "archs", "--json").stdout)
    names = {row["name"] for row in doc["entries"]}
    assert {
        "Idefics3ForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
    } <= names
    assert all(row["tiny"].startswith("tiny:") for row in doc["entries"])


@pytest.mark.parametrize("what", ["backends", "teachers", "quant", "exporters"])
def test_list_other_registries_json_parses(what):
    assert json.loads(run("list", what, "--json").stdout)["kind"] == what


def test_unknown_model_spec_is_one_line_exit_1():
    result = run("inspect", "tiny:nope", code=1)
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: unknown model spec 'tiny:nope'")
    assert "Traceback" not in result.output


def test_inspect_tiny_json():
    doc = json.loads(run("inspect", "tiny:llama", "--json").stdout)
    assert doc["architecture"] == "LlamaForCausalLM" and doc["manifest"]["kind"] == "model"


def test_bench_make_check_and_score(tmp_path):
    out = tmp_path / "b"
    doc = json.loads(
        run("bench", "make", "--out", str(out), "--n", "18", "--seed", "3", "--json").stdout
    )
    assert doc["n"] == 18
    check = json.loads(run("bench", "check", str(out), "--json").stdout)
    assert check["n"] == 18 and check["skipped"] == 0
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    results = tmp_path / "results.jsonl"

    # half right (the true answer), half wrong (another option, or a number nobody asks for)
    def wrong(r):
        return next(c for c in r["choices"] if c != r["answer"]) if r["choices"] else "99999"

    lines = [
        {"pid": r["pid"], "response": f"Final answer: {r['answer'] if i % 2 == 0 else wrong(r)}"}
        for i, r in enumerate(rows)
    ]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = json.loads(run("score", str(results), "--bench", str(out), "--json").stdout)
    assert summary["method"] == "rule-extracted"
    assert summary["correct"] == 9 and summary["n"] == 18


def test_bench_make_bad_flag_is_usage_error(tmp_path):
    result = run("bench", "make", "--out", str(tmp_path / "b"), "--families", "pie_charts", code=2)
    assert "pie_charts" in result.stderr and result.stderr.count("\n") == 1


def _problem(**changes):
    row = {
        "pid": "1",
        "question": "How many?",
        "image": "img.png",
        "choices": None,
        "answer": "3",
        "answer_type": "integer",
        "precision": None,
        "unit": None,
        "question_type": "free_form",
        "metadata": {},
    }
    row.update(changes)
    return json.dumps(row)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (_problem(image="missing.png"), "problems.jsonl:1: image: file 'missing.png' not found"),
        ('{"pid": "1", "question": ', "problems.jsonl:1: malformed JSON"),
        (_problem(answer_type="complex"), "problems.jsonl:1: answer_type: unknown value 'complex'"),
        (
            _problem(image="../outside.png"),
            "problems.jsonl:1: image: '../outside.png' escapes the dataset root",
        ),
        (_problem(image="/etc/passwd"), "problems.jsonl:1: image: '/etc/passwd' is absolute"),
    ],
)
def test_bad_problem_rows_give_one_clear_line(tmp_path, line, message):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "img.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (root / "problems.jsonl").write_text(line + "\n")
    result = run("bench", "check", str(root), code=1)
    assert message in result.stderr and result.stderr.count("\n") == 1
    skipped = json.loads(run("bench", "check", str(root), "--skip-invalid", "--json").stdout)
    assert skipped["n"] == 0 and skipped["skipped"] == 1


def test_cli_reference_is_current():
    """docs/cli.md is generated from --help; regenerate with scripts/gen_cli_docs.py."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_cli_docs.py"
    spec = importlib.util.spec_from_file_location("gen_cli_docs", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DOC.read_text() == module.render()


def test_synth_cli_json_and_teachers_listed(tmp_path):
    bench = tmp_path / "b"
    run("bench", "make", "--out", str(bench), "--n", "40", "--seed", "1", "--json")
    stats = json.loads(
        run(
            "synth",
            "--problems",
            str(bench),
            "--out",
            str(tmp_path / "s"),
            "--teacher",
            "procedural",
            "--json",
        ).stdout
    )
    assert stats["problems"] > 20 and stats["samples"]["train"]
    again = run("synth", "--problems", str(bench), "--out", str(tmp_path / "s"), code=2)
    assert "pass --resume" in again.stderr
    teachers = {
        row["name"] for row in json.loads(run("list", "teachers", "--json").stdout)["entries"]
    }
    assert teachers == {"procedural", "llama.cpp", "embedded", "hf", "openai", "vllm"}
    bad = run(
        "synth",
        "--problems",
        str(bench),
        "--out",
        str(tmp_path / "t"),
        "--teacher",
        "gpt:x",
        code=2,
    )
    assert "unknown teacher 'gpt'" in bad.stderr


def test_os_errors_and_bad_yaml_types_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("bench", "make", "--out", str(blocker / "sub"), "--n", "3", code=1)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    config = tmp_path / "c.yaml"
    config.write_text('n: "5"\nseed: 1.5\n')
    result = run("bench", "make", "--config", str(config), "--out", str(tmp_path / "b"), code=2)
    assert "n='5' is not a int; seed=1.5 is not a int" in result.stderr
