"""Tests of the synthetic benchmark: determinism, row validity, traces, choices, splits, config."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from casseat_edge.bench import (
    FAMILIES,
    OPS,
    BenchConfig,
    build_problem,
    evaluate_trace,
    format_answer,
    make_bench,
)
from casseat_edge.errors import CasseatError, ConfigError, DataError
from casseat_edge.problems import load_jsonl_problems

REQUIRED_FAMILIES = {
    "bar_chart",
    "line_plot",
    "clock",
    "triangle_angle",
    "rectangle",
    "shape_count",
    "number_line",
    "table_lookup",
    "circle",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    make_bench(BenchConfig(out=str(out), n=180, seed=3, test_fraction=0.3))
    return out


@pytest.fixture(scope="module")
def rows(bench: Path) -> list[dict]:
    return load_jsonl_problems(bench / "problems.jsonl").rows


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "casseat.json"
    }


def test_same_config_gives_identical_bytes(tmp_path: Path) -> None:
    started = time.perf_counter()
    first = make_bench(BenchConfig(out=str(tmp_path / "a"), n=300, seed=7))
    print(
        f"\nmake_bench n=300: {time.perf_counter() - started:.2f} s ({first['seconds']} s inside)"
    )
    make_bench(BenchConfig(out=str(tmp_path / "b"), n=300, seed=7))
    digests_a, digests_b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert len(digests_a) == 301
    assert digests_a == digests_b


def test_other_seed_gives_other_problems(tmp_path: Path) -> None:
    make_bench(BenchConfig(out=str(tmp_path / "a"), n=20, seed=1))
    make_bench(BenchConfig(out=str(tmp_path / "b"), n=20, seed=2))
    text_a = (tmp_path / "a" / "problems.jsonl").read_text()
    assert text_a != (tmp_path / "b" / "problems.jsonl").read_text()


def test_rows_validate_and_point_at_square_images(bench: Path, rows: list[dict]) -> None:
    assert len(rows) == 180
    for row in rows:
        assert row["pid"] == f"{row['metadata']['family']}-{int(row['pid'].rsplit('-')[1]):05d}"
        assert row["image"] == f"images/{row['pid']}.png"
        assert row["metadata"]["source"] == "casseat-synthetic"
        assert row["metadata"]["caption"].endswith(".")
        assert row["metadata"]["split"] in ("train", "test")
    with Image.open(bench / rows[0]["image"]) as image:
        assert image.size == (336, 336)


def test_every_family_and_task_is_present_and_balanced(rows: list[dict]) -> None:
    assert set(FAMILIES) >= REQUIRED_FAMILIES
    per_family: dict[str, int] = {}
    tasks = set()
    for row in rows:
        family = row["metadata"]["family"]
        per_family[family] = per_family.get(family, 0) + 1
        tasks.add((family, row["metadata"]["task"]))
    assert set(per_family) == set(FAMILIES)
    assert max(per_family.values()) - min(per_family.values()) <= 1
    assert tasks == {(name, task) for name, fam in FAMILIES.items() for task in fam.tasks}
    kinds = {(r["question_type"], r["answer_type"]) for r in rows}
    assert {
        ("free_form", "integer"),
        ("free_form", "float"),
        ("multi_choice", "multi_choice"),
    } <= kinds


def test_trace_reproduces_every_answer(rows: list[dict]) -> None:
    for row in rows:
        trace = row["metadata"]["trace"]
        assert all(step["op"] in OPS and step["what"] for step in trace)
        assert all(a < i for i, step in enumerate(trace) for a in step["args"])
        assert format_answer(evaluate_trace(trace), row) == row["answer"], row["pid"]
        assert any(step["op"] in ("read", "count") for step in trace), row["pid"]


def _misread(value: object) -> object:
    return value + 2 if isinstance(value, (int, float)) else value


def test_overriding_a_read_changes_the_answer(rows: list[dict]) -> None:
    changed = set()
    for row in rows:
        trace = row["metadata"]["trace"]
        leaves = [i for i, s in enumerate(trace) if s["op"] in ("read", "count")]
        if row["question_type"] == "free_form":
            # free-form answers are strictly monotone in each read: a misread by 2 must show
            for i in leaves:
                wrong = format_answer(evaluate_trace(trace, {i: _misread(trace[i]["value"])}), row)
                assert wrong != row["answer"], (row["pid"], i)
            changed.add(row["metadata"]["family"])
        elif trace[-2]["op"] in ("argmax", "argmin"):
            # push a losing candidate past the winner: the chosen label must change
            pick, args = trace[-2], trace[-2]["args"]
            pairs = zip(args, pick["labels"], strict=True)
            loser = next(a for a, lab in pairs if lab != pick["value"])
            values = [trace[a]["value"] for a in args]
            big = max(values) + 100 if pick["op"] == "argmax" else min(values) - 100
            wrong = format_answer(evaluate_trace(trace, {loser: big}), row)
            assert wrong != row["answer"] and wrong in row["choices"] + trace[-2]["labels"]
            changed.add(row["metadata"]["family"])
    assert changed == set(FAMILIES)


def test_clock_misread_hour_gives_a_different_time() -> None:
    row, _ = build_problem("clock", 0, seed=0)
    assert row["metadata"]["task"] == "read_time"
    trace = row["metadata"]["trace"]
    assert [s["op"] for s in trace] == ["read", "read", "time", "choose"]
    hour = trace[0]["value"]
    assert evaluate_trace(trace, {0: hour % 12 + 1}) != row["answer"]


def test_multi_choice_has_four_distinct_options(rows: list[dict]) -> None:
    multi = [r for r in rows if r["question_type"] == "multi_choice"]
    assert {r["metadata"]["family"] for r in multi} >= {"bar_chart", "clock", "number_line"}
    for row in multi:
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        assert row["answer"] in row["choices"]
        assert all(choice not in row["question"] for choice in row["choices"] if len(choice) > 2)
        assert row["metadata"]["trace"][-1]["op"] == "choose"


def test_splits_never_share_an_image(bench: Path, rows: list[dict]) -> None:
    by_split: dict[str, set[str]] = {"train": set(), "test": set()}
    for row in rows:
        digest = hashlib.sha256((bench / row["image"]).read_bytes()).hexdigest()
        by_split[row["metadata"]["split"]].add(digest)
    assert by_split["test"] and by_split["train"]
    assert not by_split["train"] & by_split["test"]
    assert len(by_split["train"]) + len(by_split["test"]) == len(rows)


def test_manifest_and_summary(tmp_path: Path) -> None:
    calls: list[int] = []
    summary = make_bench(
        BenchConfig(out=str(tmp_path), n=12, families=("clock", "circle")), progress=calls.append
    )
    assert calls == list(range(1, 13))
    manifest = json.loads((tmp_path / "casseat.json").read_text())
    assert manifest["kind"] == "bench"
    assert manifest["counts"]["family"] == {"circle": 6, "clock": 6} == summary["counts"]["family"]
    assert sum(manifest["counts"]["split"].values()) == 12 == summary["n"]
    expected = hashlib.sha256((tmp_path / "problems.jsonl").read_bytes()).hexdigest()
    assert manifest["files"]["problems.jsonl"] == expected
    assert manifest["config"]["families"] == ["clock", "circle"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    make_bench(BenchConfig(out=str(tmp_path), n=3))
    with pytest.raises(CasseatError, match="overwrite"):
        make_bench(BenchConfig(out=str(tmp_path), n=3))
    assert make_bench(BenchConfig(out=str(tmp_path), n=4, overwrite=True))["n"] == 4


def test_image_size_is_respected(tmp_path: Path) -> None:
    make_bench(BenchConfig(out=str(tmp_path), n=9, image_size=128))
    for path in (tmp_path / "images").iterdir():
        with Image.open(path) as image:
            assert image.size == (128, 128)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"families": ("bar_chart", "pie")}, "--families: unknown family 'pie'; valid: bar_chart"),
        ({"n": 0}, "--n"),
        ({"n": True}, "--n"),
        ({"test_fraction": 1.0}, "--test-fraction"),
        ({"test_fraction": -0.1}, "--test-fraction"),
        ({"image_size": 32}, "--image-size"),
        ({"image_size": 2048}, "--image-size"),
        ({"seed": "1"}, "--seed"),
    ],
)
def test_config_errors_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag.replace("(", r"\(")):
        BenchConfig(**kwargs)


def test_config_accepts_comma_separated_families() -> None:
    assert BenchConfig(families="clock, circle").families == ("clock", "circle")
    assert BenchConfig().selected == tuple(FAMILIES)


def test_malformed_trace_is_a_data_error() -> None:
    with pytest.raises(DataError, match="unknown 'pow'"):
        evaluate_trace(
            [
                {"op": "const", "args": [], "value": 2, "what": "two"},
                {"op": "pow", "args": [0], "value": 4, "what": "?"},
            ]
        )
    with pytest.raises(DataError, match="earlier steps"):
        evaluate_trace([{"op": "add", "args": [0], "value": 0, "what": "self"}])


def test_problems_do_not_depend_on_n(tmp_path: Path) -> None:
    make_bench(BenchConfig(out=str(tmp_path / "small"), n=18, seed=5))
    make_bench(BenchConfig(out=str(tmp_path / "large"), n=45, seed=5))
    small = (tmp_path / "small" / "problems.jsonl").read_text().splitlines()
    large = (tmp_path / "large" / "problems.jsonl").read_text().splitlines()
    assert large[:18] == small
    assert (
        _tree_digest(tmp_path / "small" / "images").items()
        <= _tree_digest(tmp_path / "large" / "images").items()
    )


@settings(max_examples=40, deadline=None)
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    index=st.integers(0, 10_000),
    seed=st.integers(-(2**31), 2**31),
)
def test_any_problem_round_trips_through_json(family: str, index: int, seed: int) -> None:
    row, png = build_problem(family, index, seed=seed, image_size=64)
    row = json.loads(json.dumps(row))
    assert format_answer(evaluate_trace(row["metadata"]["trace"]), row) == row["answer"]
    assert png.startswith(b"\x89PNG")


def test_override_of_a_missing_step_is_a_data_error() -> None:
    row, _ = build_problem("bar_chart", 0)
    with pytest.raises(DataError, match="overrides"):
        evaluate_trace(row["metadata"]["trace"], {99: 1})


def test_shape_counts_by_colour_count_each_kind_then_add(rows: list[dict]) -> None:
    """A colour's count is never summed in one step: one count per shape kind (a caption group),
    then their sum, so the trace (and every solution written from it) shows the addition."""
    seen = 0
    for row in rows:
        if row["metadata"]["family"] != "shape_count":
            continue
        for step in row["metadata"]["trace"]:
            if step["op"] == "count":
                group = f"{step['value']} {step['what'][:-1]}"  # "3 red circle(s)"
                assert group in row["metadata"]["caption"], (step, row["metadata"]["caption"])
            if step["op"] == "add":
                seen += 1
                assert step["what"].endswith("shapes in all") and len(step["args"]) >= 2
    assert seen
