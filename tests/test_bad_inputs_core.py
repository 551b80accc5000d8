"""Bad inputs to the core and its commands (issue 14): adversarial model answers that used to
backtrack for minutes, out-of-range precision and --n, scoring against the wrong bench, convert
over an existing directory, malformed run summaries, and wrong types through the public API.

Each bad input is replayed through the CLI (exit code, exactly one `error:` line, no traceback)
or through the API (a typed error naming the argument)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.answers import MAX_PRECISION, extract, is_correct, normalize
from casseat_edge.bench import BenchConfig
from casseat_edge.config import StageConfig, option
from casseat_edge.errors import CasseatError, ConfigError, DataError
from casseat_edge.scoring import score_rows

INT = {"pid": "i", "answer": "12", "answer_type": "integer", "choices": None,
       "precision": None, "unit": "cm"}  # fmt: skip
FLT = {**INT, "pid": "f", "answer": "3.5", "answer_type": "float", "precision": 2, "unit": None}
TXT = {**INT, "pid": "t", "answer": "Yes", "answer_type": "text", "unit": None}
OPT = {**TXT, "pid": "c", "answer": "145°", "choices": ["35°", "145°", "55°", "90°"]}


def cli(*args: str, code: int):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    return result


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- 1. ReDoS: 100 KB adversarial answers extract in linear time --------------------------------

N = 100_000
ADVERSARIAL = {
    # `final[ \t]+answer[ \t]*[*_]*[ \t]*:` split a blank run O(n^2) ways before failing
    "final answer, blanks, no colon": "Final answer" + " " * N + "x",
    "final answer, tabs": "Final answer " + " \t" * (N // 2) + "*x",
    "answer, blanks, no colon": "answer" + " " * N,
    "the answer, blanks": "The answer is the answer" + " " * N,
    "answer, emphasis then blanks": "answer **" + " " * N,
    # `<answer>(.*?)</answer>` rescanned to the end from every unclosed tag
    "unclosed answer tags": "<answer>" * (N // 8),
    "unclosed answer tags, one close": "<answer>" * (N // 8) + "</answer>",
    "digit run": "1" * N,
    "final answer, digit run": "Final answer: " + "1" * N,
    "thousands separators": "1," * (N // 2),
    "spaced fractions": "1 / " * (N // 4),
    "exponents": "1e" * (N // 2),
    "unclosed parentheses": "(" * N,
    "unclosed LaTeX": "\\(" * (N // 2),
    "unclosed boxes": "\\boxed{" * (N // 7),
    "unclosed fractions": "\\frac{" * (N // 6),
    "quotes": '"' * N,
    "spaces and commas": " ,1" * (N // 3),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_answer_extracts_fast(name: str) -> None:
    text = ADVERSARIAL[name]
    worst = 0.0
    for problem in (INT, FLT, TXT, OPT):
        for response in (text, "Final answer: " + text, "The answer is " + text):
            started = time.perf_counter()
            extract(response, problem)
            worst = max(worst, time.perf_counter() - started)
    print(f"{name}: slowest extract {worst * 1000:.1f} ms")
    assert worst < 1.0  # linear: ~10-30 ms; the old patterns took 85 s on the first input


@pytest.mark.parametrize("name", ["quotes", "unclosed LaTeX", "final answer, blanks, no colon"])
def test_adversarial_prediction_normalizes_fast(name: str) -> None:
    started = time.perf_counter()
    for problem in (INT, FLT, TXT, OPT):
        is_correct(ADVERSARIAL[name], problem)
    elapsed = time.perf_counter() - started
    print(f"{name}: is_correct on 4 problems {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0  # markup layers were peeled by slicing: O(n^2) for '"' * 100_000


# What the rule extractor gave before the rewrite, kept identical.
NORMAL_ANSWERS = [
    (INT, "Count the bars.\nFinal answer: 12", "12"),
    (INT, "**Final answer:** 12 cm", "12"),
    (INT, "Final Answer **:** $\\boxed{12}$", "12"),
    (INT, "final answer *: 1,200", "1200"),
    (INT, "Final answer:\n\n12", "12"),
    (INT, "Final answer：12", "12"),
    (INT, "So 5 + 7 = 12.\nThe answer is 12.", "12"),
    (INT, "The correct answer should be twelve.", "12"),
    (INT, "Answer: **12**", "12"),
    (INT, "I think \\boxed{7} first, then \\boxed{12}.", "12"),
    (INT, "<answer>12</answer>", "12"),
    (INT, "<ANSWER> 12 cm </answer> and <answer>13", "12"),
    (INT, "<answer>a<answer>12</answer>", "12"),
    (INT, "12", "12"),
    (INT, "The final answer is -3.", "-3"),
    (INT, "Final answer: 12.7", "12"),
    (FLT, "Final answer: 3.54", "3.54"),
    (FLT, "The answer is \\frac{7}{2}.", "3.50"),
    (FLT, "Final answer: 3.5e0", "3.50"),
    (FLT, "Final answer: 7/2", "3.50"),
    (FLT, "\\boxed{\\text{3.5 m}}", "3.50"),
    (FLT, "Final answer: −3.5", "-3.50"),
    (TXT, "Final answer: **Yes**.", "Yes"),
    (TXT, 'The answer is "yes".', "yes"),
    (TXT, "Final answer: `No`", "No"),
    (OPT, "Final answer: (B) 145°", "145°"),
    (OPT, "The correct option is B.", "145°"),
    (OPT, "Final answer: 145^\\circ", "145°"),
    (OPT, "Final answer: option C", "55°"),
    (OPT, "\\boxed{B}", "145°"),
    (OPT, "Final answer: 144", "145°"),
    (OPT, "Answer __:__ 35 degrees", "35°"),
]


@pytest.mark.parametrize(("problem", "response", "expected"), NORMAL_ANSWERS)
def test_normal_answers_extract_as_before(problem: dict, response: str, expected: str) -> None:
    assert extract(response, problem) == expected


# --- 2. precision --------------------------------------------------------------------------------


PRECISIONS = {
    "1e9": 10**9,
    "-1": -1,
    "16": 16,
    "2.5": 2.5,
    "str": "2",
    "bool": True,
    "huge": 10**5000,
}


@pytest.mark.parametrize("precision", list(PRECISIONS.values()), ids=list(PRECISIONS))
def test_out_of_range_precision_is_a_data_error_not_a_hang(precision) -> None:
    problem = {**FLT, "precision": precision}
    started = time.perf_counter()
    for call in (lambda: extract("Final answer: 3.5", problem), lambda: is_correct("3.5", problem)):
        with pytest.raises(DataError, match=r"problem 'f': precision: expected decimal places"):
            call()
    assert time.perf_counter() - started < 1.0


def test_precision_bounds_are_accepted() -> None:
    assert normalize("3.5", {**FLT, "precision": 0}) == "4"
    assert normalize("3.5", {**FLT, "precision": MAX_PRECISION}) == "3.500000000000000"
    assert normalize("3.5", {**FLT, "precision": 2.0}) == "3.50"


def _problem_row(**changes) -> dict:
    row = {"pid": "1", "question": "How long?", "image": None, "choices": None, "answer": "3.5",
           "answer_type": "float", "precision": 1, "unit": None, "question_type": "free_form",
           "metadata": {}}  # fmt: skip
    return {**row, **changes}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_problem_row_with_huge_precision_names_file_and_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "problems.jsonl", [_problem_row(precision=10**9)])
    line = one_error_line(cli("bench", "check", path, code=1))
    assert f"{path}:1: precision: expected decimal places 0..{MAX_PRECISION}" in line
    assert "1000000000" in line


def test_many_decimals_in_the_answer_cap_the_derived_precision(tmp_path: Path) -> None:
    answer = "0." + "1" * 40
    path = _write_jsonl(tmp_path / "problems.jsonl", [_problem_row(answer=answer, precision=None)])
    doc = json.loads(cli("bench", "check", path, "--json", code=0).stdout)
    assert doc["n"] == 1
    from casseat_edge.problems import load_jsonl_problems

    row = load_jsonl_problems(path).rows[0]
    assert row["precision"] == MAX_PRECISION and is_correct(answer, row)


# --- 3. bench make --n ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [str(10**23), "1000001", "0", "-3"])
def test_bench_make_n_out_of_range_is_a_usage_error(tmp_path: Path, n: str) -> None:
    started = time.perf_counter()
    line = one_error_line(cli("bench", "make", "--out", tmp_path / "b", "--n", n, code=2))
    assert line.startswith("error: --n: expected an integer in [1, 1000000]")
    assert time.perf_counter() - started < 5 and not (tmp_path / "b").exists()


# --- 4. score against the wrong bench ------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_inputs") / "bench"
    cli("bench", "make", "--out", out, "--n", "4", "--seed", "1", "--families", "clock", code=0)
    return out


def _pids(bench: Path) -> list[str]:
    return [json.loads(line)["pid"] for line in (bench / "problems.jsonl").read_text().splitlines()]


def test_score_against_the_wrong_bench_fails_naming_both_files(bench, tmp_path) -> None:
    results = _write_jsonl(
        tmp_path / "results.jsonl", [{"pid": f"other-{i}", "answer": "1"} for i in range(3)]
    )
    line = one_error_line(cli("score", results, "--bench", bench, code=1))
    assert str(results) in line and str(bench / "problems.jsonl") in line
    assert "none of its 3 result pids" in line


def test_score_with_some_unknown_pids_warns_with_the_count(bench, tmp_path) -> None:
    rows = [{"pid": pid, "answer": "1"} for pid in _pids(bench)] + [{"pid": "x", "answer": "1"}]
    results = _write_jsonl(tmp_path / "results.jsonl", rows)
    result = cli("score", results, "--bench", bench, "--json", code=0)
    assert json.loads(result.stdout)["n"] == 4
    assert "warning: 1 of 5 rows" in result.stderr and "'x'" in result.stderr
    quiet = cli("--quiet", "score", results, "--bench", bench, code=0)
    assert "warning" not in quiet.stderr


def test_score_of_an_empty_results_file_fails(bench, tmp_path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text("\n")
    line = one_error_line(cli("score", results, "--bench", bench, code=1))
    assert f"{results}: no result rows" in line


# --- 5. bench convert over an existing output ----------------------------------------------------


def test_convert_refuses_an_existing_directory_without_overwrite(bench, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_error_line(cli("bench", "convert", bench, "--out", out, code=1))
    assert "already exists and is not empty" in line and "--overwrite" in line
    line = one_error_line(cli("bench", "convert", bench, "--out", out, "--overwrite", code=1))
    assert "is not a casseat-edge bench directory" in line
    assert (out / "keep.txt").read_text() == "mine"


def test_convert_overwrite_replaces_an_earlier_bench(bench, tmp_path) -> None:
    out = tmp_path / "out"
    cli("bench", "convert", bench, "--out", out, code=0)
    (out / "stale.txt").write_text("left by an earlier run")
    cli("bench", "convert", bench, "--out", out, code=1)
    cli("bench", "convert", bench, "--out", out, "--overwrite", code=0)
    assert not (out / "stale.txt").exists() and len(_pids(out)) == 4


def test_convert_never_replaces_the_dataset_it_reads(tmp_path) -> None:
    source = tmp_path / "bench"
    cli("bench", "make", "--out", source, "--n", "2", "--families", "clock", code=0)
    line = one_error_line(cli("bench", "convert", source, "--out", source, "--overwrite", code=1))
    assert "holds the dataset being converted" in line
    assert len(_pids(source)) == 2 and len(list((source / "images").iterdir())) == 2


# --- 6. report on a bad summary ------------------------------------------------------------------

GOOD_SUMMARY = {
    "backend": "llama.cpp", "quant": "q4_k_m", "policy": "cas-seat", "model_bytes": 1000,
    "n": 2, "correct": 1, "accuracy": 0.5,
    "by_family": {"clock": {"n": 2, "correct": 1, "accuracy": 0.5}},
    "verdicts": {"counts": {f"{c}/{v}": 0 for c in ("correct", "incorrect")
                            for v in ("Accept", "Refine", "none")},
                 "self_eval_accuracy": None},
    "latency_ms": {"stages": {"stage1": {"total_ms": {"p50": 1.0, "p90": 2.0, "n": 2}}},
                   "total_ms": {"p50": 1.0, "p90": 2.0, "n": 2}},
    "decode_tokens_per_s": 10.0,
}  # fmt: skip


def _broken(path: list[str], value) -> dict:
    summary = json.loads(json.dumps(GOOD_SUMMARY))
    node = summary
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return summary


BAD_SUMMARIES = [
    ("not JSON", "{", "malformed JSON"),
    ("not UTF-8", b"\xff\xfe{}", "unreadable"),
    ("a list", [1, 2], "summary: expected a JSON object"),
    ("no accuracy", _broken(["accuracy"], KeyError), "accuracy: expected a number in [0, 1]"),
    ("accuracy text", _broken(["accuracy"], "high"), "accuracy: expected a number in [0, 1]"),
    ("n negative", _broken(["n"], -1), "n: expected a count"),
    ("label object", _broken(["backend"], {"a": 1}), "backend: expected a string"),
    ("latency number", _broken(["latency_ms"], 5), "latency_ms: expected an object"),
    ("p50 text", _broken(["latency_ms", "total_ms", "p50"], "1 ms"), "latency_ms.total_ms.p50"),
    ("stage list", _broken(["latency_ms", "stages", "stage1"], []), "latency_ms.stages.stage1"),
    ("family list", _broken(["by_family"], []), "by_family: expected an object"),
    ("family accuracy", _broken(["by_family", "clock", "accuracy"], None), "by_family.clock"),
    ("verdict key", _broken(["verdicts", "counts", "correct/Accept"], KeyError), "correct/Accept"),
    ("bytes text", _broken(["model_bytes"], "1 GB"), "model_bytes: expected a number"),
]


@pytest.mark.parametrize(
    ("label", "content", "message"), BAD_SUMMARIES, ids=[b[0] for b in BAD_SUMMARIES]
)
def test_report_on_a_bad_summary_is_one_line_naming_the_file(tmp_path, label, content, message):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for run, summary in ((good, GOOD_SUMMARY), (bad, content)):
        run.mkdir()
        raw = summary if isinstance(summary, (str, bytes)) else json.dumps(summary)
        (run / "summary.json").write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    line = one_error_line(cli("report", good, bad, "--out", tmp_path / "report", code=1))
    assert f"{bad / 'summary.json'}: " in line and message in line, line
    assert not (tmp_path / "report").exists()


def test_good_summary_passes_the_check(tmp_path) -> None:
    from runtime.report import load_runs

    (tmp_path / "summary.json").write_text(json.dumps(GOOD_SUMMARY))
    assert load_runs([tmp_path])[0]["label"] == "llama.cpp/q4_k_m/cas-seat"


# --- 7. wrong types through the public API -------------------------------------------------------


def test_answers_api_names_the_wrong_argument() -> None:
    with pytest.raises(TypeError, match="extract: response must be .* str, found NoneType"):
        extract(None, INT)
    with pytest.raises(TypeError, match="extract: problem must be a problem row"):
        extract("Final answer: 12", None)
    with pytest.raises(TypeError, match="is_correct: prediction must be a str, a number or None"):
        is_correct(["12"], INT)
    with pytest.raises(DataError, match="problem 'i': unit: expected a string or null"):
        extract("12", {**INT, "unit": 5})
    assert is_correct(12, INT) and not is_correct(None, INT)


def test_score_rows_names_the_bad_row_or_argument() -> None:
    with pytest.raises(DataError, match=r"results\[1\]: expected a result row"):
        score_rows([{"pid": "i", "answer": "12"}, "12"], {"i": INT})
    with pytest.raises(TypeError, match="score_rows: results must be a list"):
        score_rows("results.jsonl", {"i": INT})
    with pytest.raises(TypeError, match="score_rows: problems must be a dict"):
        score_rows([], [INT])


def test_stage_configs_check_field_types_by_annotation() -> None:
    from runtime.evaluate import EvalConfig

    with pytest.raises(ConfigError, match=r"EvalConfig: limit \(--limit\): expected an integer"):
        EvalConfig(bench="b", limit="x")
    with pytest.raises(ConfigError, match=r"policy \(--policy\): expected one of: direct, cot"):
        EvalConfig(bench="b", policy="best")
    with pytest.raises(ConfigError) as errors:  # every bad field at once
        BenchConfig(n="5", seed=1.5, families=3, overwrite="yes")
    for field in ("n (--n)", "seed (--seed)", "families (--families)", "overwrite (--overwrite)"):
        assert field in str(errors.value)
    assert BenchConfig(families=["clock"], out=Path("b")).families == ("clock",)


def test_a_subclass_post_init_sees_checked_types() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Sized(StageConfig):
        n: int = option(1, "how many")
        tags: tuple[str, ...] = option((), "tags")

        def __post_init__(self) -> None:
            if self.n < 1:  # a str here would be a TypeError, not a ConfigError
                raise ConfigError("--n: must be >= 1")

    with pytest.raises(ConfigError, match=r"Sized: n \(--n\): expected an integer"):
        Sized(n="3")
    with pytest.raises(
        ConfigError, match=r"tags \(--tags\): expected a list whose items are each a string"
    ):
        Sized(tags=("a", 1))
    assert Sized(tags="a, b").tags == ("a", "b")


def test_cascade_with_a_non_spec_model_is_a_casseat_error() -> None:
    from runtime import Cascade

    with pytest.raises(CasseatError, match="model spec '123'"):
        Cascade(model=123)


def test_summary_and_report_api_refuse_wrong_types(tmp_path) -> None:
    from runtime.report import write_report
    from runtime.summary import summarize

    with pytest.raises(TypeError, match="summarize: rows must be a list of result rows"):
        summarize([{"answer": "12"}], {"i": INT})
    with pytest.raises(TypeError, match="summarize: problems must be a dict"):
        summarize([], [INT])
    with pytest.raises(TypeError, match="run_dirs must be a list of run directories"):
        write_report(str(tmp_path), tmp_path / "report")


def test_a_problem_answer_of_the_wrong_type_is_named() -> None:
    with pytest.raises(DataError, match=r"problem 'i': answer: expected a string or number"):
        is_correct("12", {**INT, "answer": ["12"]})


# --- 8. undecodable files: our own problems.jsonl, a --config YAML, a 5,000-digit integer -------


def test_undecodable_problem_file_config_and_huge_integer(tmp_path):
    bench = tmp_path / "b"
    cli("bench", "make", "--out", bench, "--n", "4", "--seed", "1", code=0)
    rows = (bench / "problems.jsonl").read_bytes().splitlines(keepends=True)
    (bench / "problems.jsonl").write_bytes(rows[0] + b'{"pid": "\xff\xfe"}\n' + b"".join(rows[1:]))
    line = one_error_line(cli("bench", "check", bench, code=1))
    assert "problems.jsonl:2" in line and "UTF-8" in line
    config = tmp_path / "eval.yaml"
    config.write_bytes(b"limit: 2\nname: caf\xe9\n")
    line = one_error_line(cli("eval", "--config", config, "--bench", bench, code=2))
    assert str(config) in line and "UTF-8" in line
    (bench / "problems.jsonl").write_bytes(rows[0] + b'{"pid": ' + b"9" * 5000 + b"}\n")
    line = one_error_line(cli("bench", "check", bench, code=1))
    assert "problems.jsonl:2" in line and "digits" in line
