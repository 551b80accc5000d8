"""Prompts: answer-type hints, the stage layout of each policy, verdict parsing, the version hash."""

from __future__ import annotations

import pytest

from casseat_edge import prompts
from casseat_edge.prompts import (
    answer_hint,
    parse_verdict,
    seat_verdicts,
    stage1_messages,
    stage2_messages,
)

FREE = {
    "pid": "1",
    "question": "How tall?",
    "image": "a.png",
    "choices": None,
    "answer": "2.5",
    "answer_type": "float",
    "precision": 1,
    "unit": "cm",
}


@pytest.mark.parametrize(
    ("changes", "hint"),
    [
        ({}, "Answer with a number in cm rounded to 1 decimal place, e.g. 1.5."),
        (
            {"precision": 2, "unit": None},
            "Answer with a number rounded to 2 decimal places, e.g. 1.50.",
        ),
        ({"answer_type": "integer", "unit": None}, "Answer with an integer, e.g. 2, 15, 120."),
        ({"choices": ["1", "2", "3"]}, "Answer with the letter of the correct choice (A, B, C)."),
        ({"answer_type": "text"}, "Answer with a short phrase."),
    ],
)
def test_answer_hints(changes, hint):
    assert answer_hint({**FREE, **changes}) == hint


def test_stage_layout():
    first = stage1_messages({**FREE, "choices": ["2.5", "3.0"]})
    assert first[0]["content"][0] == {"type": "image"}
    text = first[0]["content"][1]["text"]
    assert text.startswith("How tall?\nChoices:\n(A) 2.5\n(B) 3.0\n")
    assert text.endswith("Final answer: <answer>")
    (second,) = stage2_messages()
    assert all(part["type"] == "text" for part in second["content"])  # no second image
    assert "Verdict: Accept or Refine" in second["content"][0]["text"]
    assert stage1_messages({**FREE, "image": None})[0]["content"][0]["type"] == "text"


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Step 2 is wrong.\nVerdict: Refine\nFinal answer: 3", "Refine"),
        ("**Verdict:** accept", "Accept"),
        ("Verdict: [Accept]", "Accept"),
        ("Verdict: Refine\nthen again\nVerdict: Accept.", "Accept"),
        ("End with:\nVerdict: Accept or Refine\nFinal answer: 3", None),  # an echoed instruction
        ("So the Verdict: Accept", None),
        ("I accept this.", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_seat_verdicts_in_order():
    text = "1. 3+4=8 [check] no\nVerdict: Refine\n1. 3+4=7 [check] ok\nVerdict: Accept\nFinal answer: 7"
    assert seat_verdicts(text) == ["Refine", "Accept"]


def test_hash_covers_every_prompt_text():
    assert len(prompts.PROMPT_HASH) == 16
    assert prompts.prompt_info() == {
        "prompt_version": prompts.PROMPT_VERSION,
        "prompt_hash": prompts.PROMPT_HASH,
    }
    assert set(prompts._TEXTS) >= {
        prompts.STAGE1_INSTRUCTION,
        prompts.STAGE2_INSTRUCTION,
        prompts.SEAT_INSTRUCTION,
        prompts.DIRECT_INSTRUCTION,
    }
