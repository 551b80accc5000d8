"""The prompts of every cascade policy, in one place, versioned and hashed.

Synthesis (teachers), training samples and the runtime all build their conversations here, so the
student is deployed with exactly the prompts it was trained on. `PROMPT_VERSION` and
`PROMPT_HASH` are recorded in every sample and result; changing any text below changes the hash.

Policies: `direct` (answer only), `cot` (stage 1: reason step by step, end in a final-answer line),
`seat` (one long prompt with inline self-evaluation blocks), `cas-seat` (stage 1, then a separate
short stage-2 turn reviewing it: verdict + final answer), `cas-seat-refine` (plus a stage-3
re-solve after a Refine verdict).

    messages = stage1_messages(problem)               # user turn, image first
    messages += [assistant(stage1_text), *stage2_messages()]
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from casseat_edge.answers import FINAL_ANSWER_PREFIX, LETTERS

PROMPT_VERSION = "casseat-prompts-1"
POLICIES = ("direct", "cot", "seat", "cas-seat", "cas-seat-refine")
Policy = Literal[POLICIES]  # a config field's type: its CLI choices and checks come from POLICIES
VERDICTS = ("Accept", "Refine")
VERDICT_PREFIX = "Verdict:"

DIRECT_INSTRUCTION = f"Give only the answer, on one line: {FINAL_ANSWER_PREFIX} <answer>"

STAGE1_INSTRUCTION = (
    "Solve this step by step. Say what you read from the image, then do each calculation on its "
    f"own line. Finish with one line: {FINAL_ANSWER_PREFIX} <answer>"
)

STAGE2_INSTRUCTION = (
    "Now check your solution. Go through it step by step: compare every value you used with the "
    "image and redo every calculation. If all steps hold, the verdict is Accept. If a step is "
    "wrong, say which one, correct it, and the verdict is Refine. Finish with two lines:\n"
    f"{VERDICT_PREFIX} Accept or Refine\n{FINAL_ANSWER_PREFIX} <answer>"
)

STAGE3_INSTRUCTION = (
    "Solve the problem again from the start, using the corrections from your check. Finish with "
    f"one line: {FINAL_ANSWER_PREFIX} <answer>"
)

SEAT_INSTRUCTION = (
    "Solve this step by step. After each step, check it in a block that starts with [check] and "
    f"ends with a line '{VERDICT_PREFIX} Accept' if the step holds or '{VERDICT_PREFIX} Refine' if "
    "it does not; after a Refine, redo that step before going on. Finish with one line: "
    f"{FINAL_ANSWER_PREFIX} <answer>"
)

_TEXTS = (
    DIRECT_INSTRUCTION,
    STAGE1_INSTRUCTION,
    STAGE2_INSTRUCTION,
    STAGE3_INSTRUCTION,
    SEAT_INSTRUCTION,
)
PROMPT_HASH = hashlib.sha256("\n\x00".join((PROMPT_VERSION, *_TEXTS)).encode()).hexdigest()[:16]


def instruction_texts() -> tuple[str, ...]:
    """Every fixed instruction text of the policies (what a domain vocabulary must cover)."""
    return _TEXTS


def answer_hint(problem: dict[str, Any]) -> str:
    """The answer-format hint the math benchmarks use, by answer type and precision."""
    if problem.get("choices"):
        letters = ", ".join(LETTERS[: len(problem["choices"])])
        return f"Answer with the letter of the correct choice ({letters})."
    kind = problem.get("answer_type")
    unit = f" in {problem['unit']}" if problem.get("unit") else ""
    if kind == "integer":
        return f"Answer with an integer{unit}, e.g. 2, 15, 120."
    if kind == "float":
        places = problem.get("precision") or 0
        noun = "decimal place" if places == 1 else "decimal places"
        return f"Answer with a number{unit} rounded to {places} {noun}, e.g. {1.5:.{places}f}."
    return "Answer with a short phrase."


def question_block(problem: dict[str, Any]) -> str:
    """Question, lettered choices and the answer hint, as one text."""
    parts = [problem["question"].strip()]
    if problem.get("choices"):
        parts.append(
            "Choices:\n"
            + "\n".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(problem["choices"]))
        )
    parts.append(answer_hint(problem))
    return "\n".join(parts)


def user(text: str, with_image: bool = False) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def has_image(problem: dict[str, Any]) -> bool:
    return bool(problem.get("image"))


def direct_messages(problem: dict[str, Any]) -> list[dict[str, Any]]:
    return [user(f"{question_block(problem)}\n{DIRECT_INSTRUCTION}", has_image(problem))]


def stage1_messages(problem: dict[str, Any]) -> list[dict[str, Any]]:
    """The first turn of `cot` and `cas-seat`: the image, the question, reason step by step."""
    return [user(f"{question_block(problem)}\n{STAGE1_INSTRUCTION}", has_image(problem))]


def stage2_messages() -> list[dict[str, Any]]:
    """The short second turn of `cas-seat`, appended after stage 1's answer (no new image)."""
    return [user(STAGE2_INSTRUCTION)]


def stage3_messages() -> list[dict[str, Any]]:
    return [user(STAGE3_INSTRUCTION)]


def seat_messages(problem: dict[str, Any]) -> list[dict[str, Any]]:
    return [user(f"{question_block(problem)}\n{SEAT_INSTRUCTION}", has_image(problem))]


# a verdict is a line of its own holding exactly one verdict word, so an echoed instruction
# ("Verdict: Accept or Refine") is not read as one
_VERDICT = re.compile(
    r"^[\W_]*verdict[\W_]*:[\W_]*(accept|refine)[\W_]*$", re.IGNORECASE | re.MULTILINE
)


def parse_verdict(text: str) -> str | None:
    """The last `Verdict: Accept|Refine` in `text` (markdown tolerated), or None."""
    matches = _VERDICT.findall(text or "")
    return matches[-1].capitalize() if matches else None


def seat_verdicts(text: str) -> list[str]:
    """Every verdict in a SEAT response, in order (one per self-evaluation block)."""
    return [m.capitalize() for m in _VERDICT.findall(text or "")]


def prompt_info() -> dict[str, str]:
    return {"prompt_version": PROMPT_VERSION, "prompt_hash": PROMPT_HASH}
