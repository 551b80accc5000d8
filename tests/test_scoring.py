"""Tests for `casseat_edge.scoring`: re-scoring result rows and JSONL files into a summary."""

from __future__ import annotations

import json

import pytest

from casseat_edge.errors import DataError
from casseat_edge.scoring import prediction_for, score_file, score_rows

PROBLEMS = {
    "1": {"pid": "1", "answer": "12", "answer_type": "integer", "choices": None,
          "precision": None, "unit": None, "metadata": {"family": "count"}},
    "2": {"pid": "2", "answer": "3.5", "answer_type": "float", "choices": None,
          "precision": 1, "unit": "cm", "metadata": {"family": "measure"}},
    "3": {"pid": "3", "answer": "145°", "answer_type": "text", "choices": ["35°", "145°"],
          "precision": None, "unit": None, "metadata": {"family": "angle"}},
    "4": {"pid": "4", "answer": "B", "answer_type": "multi_choice", "choices": ["A", "B", "C"],
          "precision": None, "unit": None, "metadata": {}},
}  # fmt: skip


def test_score_rows_summary():
    results = [
        {"pid": "1", "answer": "12"},  # right
        {"pid": "2", "response": "Work.\nFinal answer: 3.54 cm"},  # right after rounding
        {"pid": "3", "response": "The answer is (A) 35°."},  # wrong option
        {"pid": "4", "answer": None},  # unanswered
        {"pid": "99", "answer": "1"},  # not a known problem
    ]
    summary = score_rows(results, PROBLEMS)
    assert summary["method"] == "rule-extracted"
    assert (summary["n"], summary["correct"]) == (4, 2)
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["missing"] == ["99"]
    assert summary["unanswered"] == 1
    assert summary["by_family"] == {
        "angle": {"n": 1, "correct": 0, "accuracy": 0.0},
        "count": {"n": 1, "correct": 1, "accuracy": 1.0},
        "measure": {"n": 1, "correct": 1, "accuracy": 1.0},
        "unknown": {"n": 1, "correct": 0, "accuracy": 0.0},
    }
    assert summary["by_answer_type"]["float"] == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert summary["by_answer_type"]["multi_choice"]["correct"] == 0


def test_stale_correct_flags_are_ignored():
    summary = score_rows([{"pid": "1", "answer": "13", "correct": True}], PROBLEMS)
    assert summary["correct"] == 0


def test_numeric_pids_and_answers():
    summary = score_rows([{"pid": 1, "answer": 12}, {"pid": 2, "answer": 3.5}], PROBLEMS)
    assert summary["correct"] == 2


def test_letter_answer_for_option_text_problem():
    assert score_rows([{"pid": "3", "answer": "B"}], PROBLEMS)["correct"] == 1


def test_empty_results():
    summary = score_rows([], PROBLEMS)
    assert (summary["n"], summary["accuracy"], summary["by_family"]) == (0, 0.0, {})


def test_prediction_prefers_answer_then_response():
    problem = PROBLEMS["1"]
    assert prediction_for({"answer": "7", "response": "Final answer: 12"}, problem, "w") == "7"
    assert prediction_for({"answer": None, "response": "Final answer: 12"}, problem, "w") == "12"
    assert prediction_for({"response": None}, problem, "w") is None


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"answer": "1"}, "pid"),
        ({"pid": "1"}, "answer"),
        ({"pid": "1", "response": 5}, "response"),
        ({"pid": "1", "answer": ["1"]}, "answer"),
    ],
)
def test_bad_rows_are_data_errors(row, field):
    with pytest.raises(DataError, match=rf"results\[1\]: {field}:"):
        score_rows([{"pid": "1", "answer": "12"}, row], PROBLEMS)


def test_score_file(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [{"pid": "1", "answer": "12"}, {"pid": "4", "response": "\\boxed{B}"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    summary = score_file(path, PROBLEMS)
    assert (summary["n"], summary["correct"], summary["accuracy"]) == (2, 2, 1.0)


def test_score_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"pid": "1", "answer": "12"}\n{"pid": "1", "answer": \n')
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        score_file(path, PROBLEMS)
    path.write_text('{"pid": "1", "answer": "12"}\n{"answer": "12"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: pid:"):
        score_file(path, PROBLEMS)


def test_score_file_missing_file(tmp_path):
    with pytest.raises(DataError, match="results file not found"):
        score_file(tmp_path / "nope.jsonl", PROBLEMS)
