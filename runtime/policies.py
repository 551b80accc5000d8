"""The cascade policies: how many turns, with which prompts (all from `casseat_edge.prompts`).

Each policy is a function of a `Run` (the conversation, the problem, the stage recorder) that
returns the answer, where it came from, and the verdict. `cas-seat`'s stage 2 is a separate short
turn in the same conversation; its answer is the answer, and stage 1's is used only when stage 2
gives none (recorded as `answer_source="stage1-fallback"`). `cas-seat-refine` re-solves after a
Refine (stage 3) and checks again, for at most `max_refine_rounds` rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from casseat_edge.answers import extract
from casseat_edge.prompts import (
    POLICIES,
    assistant,
    direct_messages,
    parse_verdict,
    seat_messages,
    stage1_messages,
    stage2_messages,
    stage3_messages,
)


@dataclasses.dataclass
class Outcome:
    answer: str | None
    answer_source: str | None
    verdict: str | None


class Run:
    """What a policy works with: the problem and a `say(name, messages)` that runs one turn and
    returns the stage's raw reply text (stage records are kept by the cascade)."""

    def __init__(self, problem: dict[str, Any], say: Callable[[str, list[dict[str, Any]]], str]):
        self.problem = problem
        self.say = say

    def answer_of(self, text: str) -> str | None:
        return extract(text, self.problem)


def direct(run: Run, options: dict[str, Any]) -> Outcome:
    text = run.say("direct", direct_messages(run.problem))
    return Outcome(run.answer_of(text), "direct", None)


def cot(run: Run, options: dict[str, Any]) -> Outcome:
    text = run.say("stage1", stage1_messages(run.problem))
    return Outcome(run.answer_of(text), "stage1", None)


def seat(run: Run, options: dict[str, Any]) -> Outcome:
    text = run.say("seat", seat_messages(run.problem))
    return Outcome(run.answer_of(text), "seat", parse_verdict(text))


def cas_seat(run: Run, options: dict[str, Any]) -> Outcome:
    outcome, _ = _solve_and_check(run)
    return outcome


def cas_seat_refine(run: Run, options: dict[str, Any]) -> Outcome:
    outcome, conversation = _solve_and_check(run)
    for round_ in range(1, int(options.get("max_refine_rounds", 1)) + 1):
        if outcome.verdict != "Refine":
            break
        conversation += stage3_messages()
        resolve = run.say(f"stage3.{round_}", conversation)
        conversation += [assistant(resolve), *stage2_messages()]
        check = run.say(f"stage2.{round_ + 1}", conversation)
        conversation.append(assistant(check))
        outcome = _pick(run, [(f"stage2.{round_ + 1}", check), (f"stage3.{round_}", resolve)])
        outcome.verdict = parse_verdict(check)
    return outcome


def _solve_and_check(run: Run) -> tuple[Outcome, list[dict[str, Any]]]:
    conversation = stage1_messages(run.problem)
    solve = run.say("stage1", conversation)
    conversation += [assistant(solve), *stage2_messages()]
    check = run.say("stage2", conversation)
    conversation.append(assistant(check))
    outcome = _pick(run, [("stage2", check), ("stage1", solve)])
    outcome.verdict = parse_verdict(check)
    return outcome, conversation


def _pick(run: Run, candidates: list[tuple[str, str]]) -> Outcome:
    """The first candidate stage with an answer; a later one is a recorded fallback."""
    for i, (name, text) in enumerate(candidates):
        answer = run.answer_of(text)
        if answer is not None:
            return Outcome(answer, name if i == 0 else f"{name}-fallback", None)
    return Outcome(None, None, None)


POLICY_FUNCTIONS: dict[str, Callable[[Run, dict[str, Any]], Outcome]] = {
    "direct": direct,
    "cot": cot,
    "seat": seat,
    "cas-seat": cas_seat,
    "cas-seat-refine": cas_seat_refine,
}
# every policy the prompts (and so the training data) know has an implementation, and no other
assert tuple(POLICY_FUNCTIONS) == POLICIES, (tuple(POLICY_FUNCTIONS), POLICIES)
