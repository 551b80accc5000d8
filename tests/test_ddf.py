"""Double-level Data Filtering: every source rule and every labeled rule, on handmade outputs."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from casseat_edge.prompts import PROMPT_HASH, PROMPT_VERSION
from training.synth.config import SynthConfig
from training.synth.ddf import label_output, source_filter
from training.synth.mix import build_samples, held_out_group, mix

PROBLEM = {
    "pid": "p1",
    "question": "What is the value of bar B?",
    "image": "a.png",
    "choices": None,
    "answer": "12",
    "answer_type": "integer",
    "precision": None,
    "unit": None,
    "question_type": "free_form",
    "metadata": {"family": "bar_chart", "caption": "Bars A=3, B=12."},
}
CHOICE = {
    **PROBLEM,
    "pid": "p2",
    "choices": ["3", "7", "12"],
    "answer": "12",
    "answer_type": "multi_choice",
    "question_type": "multi_choice",
}


def _config(**kw):
    return SynthConfig(problems="x", **kw)


def test_source_rules(tmp_path):
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    Image.new("RGB", (200, 200), "blue").save(tmp_path / "big.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [
        PROBLEM,
        {**PROBLEM, "pid": "dup", "question": "what is the  value of bar b?"},
        {**PROBLEM, "pid": "empty", "question": "  "},
        {**PROBLEM, "pid": "long", "question": "x" * 50},
        {**PROBLEM, "pid": "type", "answer_type": "list"},
        {**PROBLEM, "pid": "broken", "image": "broken.png"},
        {**PROBLEM, "pid": "big", "image": "big.png"},
        {**PROBLEM, "pid": "family", "metadata": {"family": "clock", "caption": "c"}},
        {**PROBLEM, "pid": "nocap", "question": "Other?", "metadata": {"family": "bar_chart"}},
        {**PROBLEM, "pid": "other", "question": "Another question?"},
    ]
    config = _config(max_question_chars=40, max_image_pixels=100 * 100, families=("bar_chart",))
    kept, rejected = source_filter(rows, tmp_path, config, needs_caption=True)
    assert [p["pid"] for p in kept] == ["p1", "other"]
    assert {r.pid: r.rule for r in rejected} == {
        "dup": "duplicate",
        "empty": "empty_question",
        "long": "question_too_long",
        "type": "unsupported_answer_type",
        "broken": "image_unreadable",
        "big": "image_too_large",
        "family": "family_not_allowed",
        "nocap": "no_caption",
    }
    kept, _ = source_filter(rows[-2:], tmp_path, config, needs_caption=False)
    assert len(kept) == 2  # a teacher that sees images needs no caption


def test_huge_images_are_rejected_before_decoding(tmp_path, monkeypatch):
    Image.new("1", (5000, 5000)).save(tmp_path / "wide.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")
    rows = [
        {**PROBLEM, "pid": "wide", "image": "wide.png"},
        {**PROBLEM, "pid": "bomb", "image": "bomb.png", "question": "Other?"},
    ]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2x this outright
    _, rejected = source_filter(rows, tmp_path, _config(max_image_pixels=16_000_000), False)
    assert [(r.pid, r.rule) for r in rejected] == [
        ("wide", "image_too_large"),
        ("bomb", "image_too_large"),
    ]


def _output(stage1, stage2, pid="p1"):
    return {
        "pid": pid,
        "mode": "cas-seat",
        "stage1": stage1,
        "stage2": stage2,
        "seat": None,
        "error": None,
        "stats": {},
    }


RIGHT, WRONG = "B is 12.\nFinal answer: 12", "B is 13.\nFinal answer: 13"


@pytest.mark.parametrize(
    ("stage1", "stage2", "cot", "eval_rule", "verdict"),
    [
        (RIGHT, "All steps hold.\nVerdict: Accept\nFinal answer: 12", True, None, "Accept"),
        (WRONG, "Step 1 misread B.\nVerdict: Refine\nFinal answer: 12", False, None, "Refine"),
        (WRONG, "Verdict: Accept\nFinal answer: 13", False, "accept_on_incorrect", None),
        (RIGHT, "Verdict: Refine\nFinal answer: 11", True, "refine_on_correct", None),
        (RIGHT, "Verdict: Accept\nFinal answer: 11", True, "accept_changed_answer", None),
        (WRONG, "Verdict: Refine\nFinal answer: 14", False, "refine_still_incorrect", None),
        (RIGHT, "Looks fine to me.", True, "stage2_unparseable", None),
        (
            "I am not sure.\nSomething about bars and more.",
            "Verdict: Refine\nFinal answer: 12",
            False,
            None,
            "Refine",
        ),
    ],
)
def test_labeled_rules(stage1, stage2, cot, eval_rule, verdict):
    labeled = label_output(_output(stage1, stage2), PROBLEM)
    assert (labeled.cot is not None) == cot
    rules = {r.rule for r in labeled.rejections if r.kind == "eval"}
    assert rules == ({eval_rule} if eval_rule else set())
    if verdict:
        assert labeled.eval["verdict"] == verdict and labeled.eval["final_answer"] == "12"


def test_filter_extracts_strictly():
    """Scoring may guess (nearest option, truncation); the training-data filter may not."""
    garbage = label_output(_output("Final answer: I do not know", "x"), CHOICE)
    assert "stage1_unparseable" in {r.rule for r in garbage.rejections}
    truncated = label_output(_output("Final answer: 12.9", "x"), PROBLEM)
    assert truncated.cot is None and "stage1_unparseable" in {r.rule for r in truncated.rejections}
    echoed = label_output(_output(RIGHT, "Verdict: Accept or Refine\nFinal answer: 12"), PROBLEM)
    assert echoed.eval is None and "stage2_unparseable" in {r.rule for r in echoed.rejections}


def test_unparseable_stage1_and_teacher_error():
    labeled = label_output(_output("I am not sure.\nSomething about bars and more.", "x"), PROBLEM)
    assert {r.rule for r in labeled.rejections} == {"stage1_unparseable", "stage2_unparseable"}
    errored = label_output({**_output(None, None), "error": "TimeoutError: slow"}, PROBLEM)
    assert [r.rule for r in errored.rejections] == ["teacher_error"]


def test_multi_choice_letters_and_seat():
    labeled = label_output(
        _output("So (C).\nFinal answer: C", "Verdict: Accept\nFinal answer: C"), CHOICE
    )
    assert labeled.cot["final_answer"] == "12" and labeled.eval["verdict"] == "Accept"
    seat = {
        "pid": "p1",
        "mode": "seat",
        "seat": "B=12 [check] ok\nVerdict: Accept\nFinal answer: 12",
        "stage1": None,
        "stage2": None,
        "error": None,
    }
    assert label_output(seat, PROBLEM).seat["verdicts"] == ["Accept"]
    no_check = {**seat, "seat": "B=12\nFinal answer: 12"}
    assert [r.rule for r in label_output(no_check, PROBLEM).rejections] == ["seat_no_verdict"]


def test_samples_messages_and_mix():
    output = _output(WRONG, "Step 1 misread B.\nVerdict: Refine\nFinal answer: 12")
    samples = build_samples(
        label_output(output, PROBLEM), output, PROBLEM, "procedural", "images/a.png"
    )
    assert [s["kind"] for s in samples] == ["eval"]
    messages = samples[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"][0] == {"type": "image"}
    assert messages[3]["content"][0]["text"].endswith("Final answer: 12")
    assert samples[0]["teacher"] == {
        "spec": "procedural",
        "prompt_version": PROMPT_VERSION,
        "prompt_hash": PROMPT_HASH,
    }
    pool = [{"kind": "cot", "label": {}, "n": i} for i in range(30)]
    pool += [{"kind": "eval", "label": {"verdict": "Accept"}, "n": i} for i in range(10)]
    mixed, dropped = mix(pool, 0.5, seed=1)
    assert sum(s["kind"] == "cot" for s in mixed) == 10 and dropped == {"cot": 20, "eval": 0}
    mixed, _ = mix(pool, 0.2, seed=1)
    assert sum(s["kind"] == "eval" for s in mixed) == 8  # round(0.2 / 0.8 * 30)
    assert mix(pool, 0.2, seed=1) == mix(pool, 0.2, seed=1)
    only_cot = [s for s in pool if s["kind"] == "cot"]
    assert mix(only_cot, 0.5, seed=1) == (only_cot, {"cot": 0, "eval": 0})
    assert mix(only_cot, 1.0, seed=1) == ([], {"cot": 30, "eval": 0})


def test_held_out_split_is_by_image_and_seeded():
    picks = [held_out_group(f"hash{i}", f"p{i}", 0, 0.25) for i in range(2000)]
    assert 0.2 < sum(picks) / len(picks) < 0.3
    assert held_out_group("same", "p1", 0, 0.25) == held_out_group("same", "p2", 0, 0.25)


def test_config_validation():
    with pytest.raises(Exception, match="--problems: required"):
        SynthConfig()
    with pytest.raises(Exception, match="--error-rate: must be between 0 and 1"):
        _config(error_rate=1.5)
    assert dataclasses.replace(_config(), limit=3).limit == 3
