"""Double-level Data Filtering (DDF).

Source level, before any teacher call: unreadable or oversized images, empty or over-long
questions, answer types we cannot check, duplicates (image hash + normalized question), a family
allow-list, and missing captions for teachers that cannot see images.

Labeled level, after the teacher: a stage-1 (CoT) sample is kept only when its extracted answer is
correct (extracted strictly: no nearest-option or truncation guesses); a stage-2 (evaluation) sample only when its verdict is consistent with stage 1's
correctness (correct -> Accept with the same correct answer; incorrect -> Refine with a final answer
that is correct); unparseable outputs are dropped. A SEAT sample is kept when its final answer is
correct and it contains at least one self-evaluation verdict.

Every rejection carries its rule; `Rejection.to_dict()` is a line of `rejected.jsonl`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from casseat_edge.answers import extract, is_correct
from casseat_edge.problems import ANSWER_TYPES
from casseat_edge.prompts import parse_verdict, seat_verdicts

SOURCE_RULES = (
    "empty_question",
    "question_too_long",
    "unsupported_answer_type",
    "image_unreadable",
    "image_too_large",
    "duplicate",
    "family_not_allowed",
    "no_caption",
)
LABELED_RULES = (
    "teacher_error",
    "stage1_unparseable",
    "stage1_incorrect",
    "stage2_unparseable",
    "accept_on_incorrect",
    "refine_on_correct",
    "accept_changed_answer",
    "refine_still_incorrect",
    "seat_unparseable",
    "seat_incorrect",
    "seat_no_verdict",
)


@dataclasses.dataclass
class Rejection:
    pid: str
    level: str  # source | labeled
    rule: str
    detail: str = ""
    kind: str | None = None  # cot | eval | seat for labeled rejections

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Labeled:
    """The labeled-level verdict on one teacher output: which samples survive, and their labels."""

    pid: str
    cot: dict[str, Any] | None = None  # label of the kept CoT sample
    eval: dict[str, Any] | None = None  # label of the kept evaluation sample
    seat: dict[str, Any] | None = None
    rejections: list[Rejection] = dataclasses.field(default_factory=list)


def source_filter(
    problems: list[dict[str, Any]], root: Path, config: Any, needs_caption: bool
) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Keep the problems worth a teacher call; the others come back as rejections."""
    kept, rejected, seen = [], [], set()
    for problem in problems:
        rule, detail, key = _source_rule(problem, root, config, needs_caption)
        if rule is None and key in seen:
            rule, detail = "duplicate", "same image and question as an earlier problem"
        if rule:
            rejected.append(Rejection(problem["pid"], "source", rule, detail))
            continue
        seen.add(key)
        kept.append(problem)
    return kept, rejected


def _source_rule(
    problem: dict[str, Any], root: Path, config: Any, needs_caption: bool
) -> tuple[str | None, str, str]:
    question = (problem.get("question") or "").strip()
    if not question:
        return "empty_question", "", ""
    if len(question) > config.max_question_chars:
        return "question_too_long", f"{len(question)} > {config.max_question_chars} chars", ""
    if problem.get("answer_type") not in ANSWER_TYPES:
        return "unsupported_answer_type", str(problem.get("answer_type")), ""
    if config.families and problem.get("metadata", {}).get("family") not in config.families:
        return "family_not_allowed", str(problem.get("metadata", {}).get("family")), ""
    if needs_caption and problem.get("image") and not problem.get("metadata", {}).get("caption"):
        return "no_caption", "the teacher reads captions and this problem has none", ""
    image_hash, rule, detail = _image_check(problem, root, config.max_image_pixels)
    normalized = re.sub(r"\s+", " ", question.lower())
    return rule, detail, f"{image_hash}:{normalized}"


def _image_check(
    problem: dict[str, Any], root: Path, max_pixels: int
) -> tuple[str, str | None, str]:
    if not problem.get("image"):
        return "", None, ""
    path = root / problem["image"]
    try:
        with Image.open(path) as image:  # reads the header only: the size before any decoding
            width, height = image.size
            if width * height > max_pixels:
                return "", "image_too_large", f"{width}x{height} > {max_pixels} pixels"
            image.verify()
        data = path.read_bytes()
    except Image.DecompressionBombError:
        return "", "image_too_large", f"{problem['image']}: over Pillow's decompression-bomb limit"
    except (OSError, UnidentifiedImageError) as exc:
        return "", "image_unreadable", f"{problem['image']}: {exc.__class__.__name__}"
    return hashlib.sha256(data).hexdigest(), None, ""


def label_output(output: dict[str, Any], problem: dict[str, Any]) -> Labeled:
    """Apply the labeled-level rules to one teacher output record."""
    result = Labeled(output["pid"])
    if output.get("error"):
        result.rejections.append(
            Rejection(output["pid"], "labeled", "teacher_error", output["error"])
        )
    elif output["mode"] == "seat":
        _label_seat(result, output["seat"] or "", problem)
    else:
        _label_cascade(result, output["stage1"] or "", output["stage2"] or "", problem)
    return result


def _label_cascade(result: Labeled, stage1: str, stage2: str, problem: dict[str, Any]) -> None:
    answer1 = extract(stage1, problem, strict=True)
    correct1 = is_correct(answer1, problem)
    reject = _rejector(result)
    if answer1 is None:
        reject("stage1_unparseable", "cot", "no final answer found")
    elif not correct1:
        reject("stage1_incorrect", "cot", f"answered {answer1!r}, expected {problem['answer']!r}")
    else:
        result.cot = {"correct": True, "verdict": None, "final_answer": answer1}
    verdict, answer2 = parse_verdict(stage2), extract(stage2, problem, strict=True)
    rule = _eval_rule(answer1, correct1, verdict, answer2, problem)
    if rule:
        reject(
            rule,
            "eval",
            f"stage 1 {'correct' if correct1 else 'incorrect'}, verdict {verdict}, final {answer2!r}",
        )
    else:
        result.eval = {
            "correct": True,
            "verdict": verdict,
            "final_answer": answer2,
            "stage1_correct": correct1,
        }


def _eval_rule(
    answer1: str | None,
    correct1: bool,
    verdict: str | None,
    answer2: str | None,
    problem: dict[str, Any],
) -> str | None:
    if verdict is None or answer2 is None:
        return "stage2_unparseable"
    correct2 = is_correct(answer2, problem)
    if correct1:
        if verdict == "Refine":
            return "refine_on_correct"
        return None if correct2 else "accept_changed_answer"
    if verdict == "Accept":
        return "accept_on_incorrect"
    return None if correct2 else "refine_still_incorrect"


def _label_seat(result: Labeled, text: str, problem: dict[str, Any]) -> None:
    answer = extract(text, problem, strict=True)
    reject = _rejector(result)
    if answer is None:
        reject("seat_unparseable", "seat", "no final answer found")
    elif not is_correct(answer, problem):
        reject("seat_incorrect", "seat", f"answered {answer!r}, expected {problem['answer']!r}")
    elif not seat_verdicts(text):
        reject("seat_no_verdict", "seat", "no self-evaluation verdict in the response")
    else:
        verdicts = seat_verdicts(text)
        result.seat = {
            "correct": True,
            "verdict": verdicts[-1],
            "final_answer": answer,
            "verdicts": verdicts,
        }


def _rejector(result: Labeled):
    def reject(rule: str, kind: str, detail: str) -> None:
        result.rejections.append(Rejection(result.pid, "labeled", rule, detail, kind))

    return reject
