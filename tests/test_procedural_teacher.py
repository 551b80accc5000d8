"""The procedural teacher on a real synthetic benchmark: clean solutions are right, injected errors
make stage 1 wrong and a faithful review fixes them, wrong reviews happen in all three ways at the
configured rate, outputs are deterministic, SEAT responses parse, and a bad problem is skipped."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from casseat_edge.answers import extract, is_correct
from casseat_edge.bench import FAMILIES, BenchConfig, make_bench
from casseat_edge.prompts import parse_verdict, seat_verdicts
from casseat_edge.registry import TEACHERS
from training.synth.config import SynthConfig
from training.synth.teachers.base import SynthItem, TeacherOutput
from training.synth.teachers.procedural import (
    ERROR_TYPES,
    EVAL_ERROR_TYPES,
    NO_TRACE,
    ProceduralTeacher,
)


def _bench(root: Path, n: int) -> tuple[Path, list[SynthItem]]:
    out = root / f"bench{n}"
    make_bench(BenchConfig(out=str(out), n=n, seed=3))
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    return out, [SynthItem(row, out / row["image"]) for row in rows]


@pytest.fixture(scope="module")
def bench90(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthItem]]:
    return _bench(tmp_path_factory.mktemp("procedural"), 90)


@pytest.fixture(scope="module")
def bench300(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthItem]]:
    return _bench(tmp_path_factory.mktemp("procedural"), 300)


def _run(
    bench: tuple[Path, list[SynthItem]], mode: str = "cas-seat", **knobs
) -> list[TeacherOutput]:
    path, items = bench
    config = SynthConfig(problems=str(path), **knobs)
    outputs = list(ProceduralTeacher("procedural", "", config).run(items, mode))
    assert [o.pid for o in outputs] == [i.pid for i in items]
    return outputs


def _right(text: str | None, item: SynthItem) -> bool:
    return is_correct(extract(text, item.problem), item.problem)


def test_registered_under_procedural() -> None:
    assert TEACHERS.get("procedural") is ProceduralTeacher
    assert ProceduralTeacher.sees_images and ProceduralTeacher.describe() == {"spec": "procedural"}


def test_clean_solutions_are_right_and_accepted_for_every_family(bench90) -> None:
    outputs = _run(bench90, error_rate=0.0, eval_error_rate=0.0)
    items = bench90[1]
    assert {i.problem["metadata"]["family"] for i in items} == set(FAMILIES)
    for item, out in zip(items, outputs, strict=True):
        assert out.error is None and out.stats["injected"] is None, out
        assert _right(out.stage1, item), (item.problem["answer"], out.stage1)
        assert parse_verdict(out.stage2) == "Accept" == out.stats["verdict"], out.stage2
        assert _right(out.stage2, item), out.stage2
        if item.problem.get("choices"):  # the letter, in parentheses: options can be letters too
            assert out.stage1.splitlines()[-1].startswith("Final answer: (")


def test_wording_varies(bench90) -> None:
    text = "\n".join(o.stage1 for o in _run(bench90, error_rate=0.0))
    for phrase in (
        "I read ",
        "From the image, ",
        "Looking at the image, ",
        "(read from the image)",
    ):
        assert phrase in text


def test_plain_wording_is_one_phrasing_per_line_kind_and_shorter(bench90) -> None:
    varied = _run(bench90, error_rate=0.3, eval_error_rate=0.1)
    plain = _run(bench90, error_rate=0.3, eval_error_rate=0.1, wording="plain")
    text = "\n".join(o.stage1 + "\n" + o.stage2 for o in plain)
    assert "From the image, " not in text and "Looking at the image, " not in text
    assert all(o.stage1.startswith("Step 1: ") for o in plain)  # no opener; steps as reviews say
    assert {o.stage2.splitlines()[0] for o in plain} == {"Going back over each step:"}
    for a, b in zip(varied, plain, strict=True):  # the same solutions, errors and verdicts
        assert a.stats == b.stats
    assert len(text) < 0.95 * len("\n".join(o.stage1 + "\n" + o.stage2 for o in varied))


def test_every_injected_error_makes_stage1_wrong_and_a_faithful_review_fixes_it(bench90) -> None:
    outputs = _run(bench90, error_rate=1.0, eval_error_rate=0.0)
    kinds = Counter()
    for item, out in zip(bench90[1], outputs, strict=True):
        injected = out.stats["injected"]
        assert injected and injected["type"] in ERROR_TYPES and injected["true"] != injected["used"]
        kinds[injected["type"]] += 1
        assert not _right(out.stage1, item), out.stage1
        assert parse_verdict(out.stage2) == "Refine", out.stage2
        assert _right(out.stage2, item), out.stage2
        assert f"Step {injected['step'] + 1} is wrong" in out.stage2  # it names the wrong step
    assert len(kinds) >= 4, kinds


def test_wrong_reviews_happen_in_all_three_ways_at_the_configured_rates(bench300) -> None:
    items = bench300[1]
    outputs = _run(bench300, error_rate=0.3, eval_error_rate=0.2)
    seen = Counter()
    for item, out in zip(items, outputs, strict=True):
        first_right, verdict = _right(out.stage1, item), parse_verdict(out.stage2)
        final_right = _right(out.stage2, item)
        assert first_right == (out.stats["injected"] is None)
        assert verdict == out.stats["verdict"]
        if not first_right and verdict == "Accept":
            kind = "missed_error"  # (a)
        elif first_right and verdict == "Refine":
            kind = "false_alarm"  # (b)
        elif not first_right and not final_right:
            kind = "wrong_fix"  # (c)
        else:
            kind = None
            assert final_right, out.stage2
        assert out.stats["eval_error"] == kind, (out.stats, out.stage2)
        assert kind is None or not final_right
        seen[kind] += 1
        seen[verdict] += 1
    assert seen["Accept"] and seen["Refine"]
    assert all(seen[kind] > 0 for kind in EVAL_ERROR_TYPES), seen
    injected = sum(o.stats["injected"] is not None for o in outputs) / len(outputs)
    wrong_reviews = sum(seen[kind] for kind in EVAL_ERROR_TYPES) / len(outputs)
    print(f"injected {injected:.3f} (0.3), wrong reviews {wrong_reviews:.3f} (0.2), {dict(seen)}")
    assert 0.2 <= injected <= 0.4
    assert 0.12 <= wrong_reviews <= 0.28


def test_outputs_are_deterministic_per_seed(bench90) -> None:
    knobs = {"error_rate": 0.5, "eval_error_rate": 0.3}
    first = [o.to_dict() for o in _run(bench90, seed=1, **knobs)]
    assert first == [o.to_dict() for o in _run(bench90, seed=1, **knobs)]
    other = [o.to_dict() for o in _run(bench90, seed=2, **knobs)]
    assert sum(a != b for a, b in zip(first, other, strict=True)) > len(first) // 2


def test_seat_responses_check_every_step_and_end_in_an_answer(bench90) -> None:
    outputs = _run(bench90, "seat", error_rate=0.5, eval_error_rate=0.0)
    for item, out in zip(bench90[1], outputs, strict=True):
        verdicts = seat_verdicts(out.seat)
        assert verdicts and verdicts == out.stats["verdicts"], out.seat
        assert out.seat.count("[check]") == len(verdicts)
        assert extract(out.seat, item.problem) is not None
        assert _right(out.seat, item), out.seat  # a faithful check repairs every injected error
        assert ("Refine" in verdicts) == (out.stats["injected"] is not None)


def test_seat_missed_errors_carry_through(bench90) -> None:
    outputs = _run(bench90, "seat", error_rate=1.0, eval_error_rate=1.0)
    missed = [
        (item, out)
        for item, out in zip(bench90[1], outputs, strict=True)
        if out.stats["eval_error"] == "missed_error"
    ]
    assert missed
    for item, out in missed:
        assert "Refine" not in out.stats["verdicts"] and not _right(out.seat, item)


def test_a_problem_without_trace_is_reported_and_the_run_goes_on(bench90) -> None:
    path, items = bench90
    broken = copy.deepcopy(items[3].problem)
    del broken["metadata"]["trace"]
    mixed = [*items[:3], SynthItem(broken, None), *items[4:8]]
    outputs = _run((path, mixed), error_rate=0.3)
    assert outputs[3].error == NO_TRACE and outputs[3].stage1 is None
    assert all(o.error is None and o.stage2 for i, o in enumerate(outputs) if i != 3)


def test_300_problems_take_well_under_five_seconds(bench300) -> None:
    start = time.perf_counter()
    outputs = _run(bench300, error_rate=0.3, eval_error_rate=0.1)
    seconds = time.perf_counter() - start
    print(f"procedural teacher: {len(outputs) / seconds:.0f} problems/s ({seconds:.2f} s for 300)")
