"""The procedural teacher: Cas-SEAT outputs written from a problem's solution trace, no model.

Every synthetic benchmark problem carries `metadata.trace` (see `casseat_edge.bench.trace`). This
teacher turns the trace into a step-by-step stage-1 solution in varied wording (or, with
`wording="plain"`, always the shortest phrasing); with probability
`config.error_rate` it injects one realistic error (misread, off_by_one, arithmetic_slip,
wrong_operation, wrong_option) and re-executes the trace so everything downstream follows from it.
The stage-2 review re-derives each step, names the wrong one and ends in `Verdict:` and
`Final answer:` lines; with probability `config.eval_error_rate` the review is itself wrong
(missed_error, false_alarm or wrong_fix). `seat` mode interleaves steps with `[check]` blocks.

    teacher = make_teacher("procedural", SynthConfig(problems="runs/bench", error_rate=0.3))
    for output in teacher.run(items, mode="cas-seat"):  # or mode="seat"
        ...  # output.stage1, output.stage2; output.stats: injected, eval_error, verdict

Choice answers are written as "Final answer: (B) 8:10": the bare letter would be ambiguous where
the options are themselves letters (bar labels A-H).

Outputs are deterministic per (config.seed, pid): each problem seeds its own `random.Random`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from casseat_edge.answers import final_answer_line, is_correct
from casseat_edge.bench.trace import evaluate_trace, format_answer, format_value
from casseat_edge.errors import ConfigError, DataError
from casseat_edge.prompts import LETTERS, VERDICT_PREFIX
from casseat_edge.registry import TEACHERS
from training.synth.teachers.base import SynthItem, Teacher, TeacherOutput, _error_text

NO_TRACE = "procedural teacher needs a solution trace (metadata.trace)"
ERROR_TYPES = ("misread", "off_by_one", "arithmetic_slip", "wrong_operation", "wrong_option")
EVAL_ERROR_TYPES = ("missed_error", "false_alarm", "wrong_fix")  # (a), (b), (c) of a wrong review
COMPUTE_OPS = ("add", "sub", "mul", "div", "sqr", "abs")
SWAPS = {"add": ("sub", "mul"), "sub": ("add",), "mul": ("add",), "div": ("mul",)}
APPLY: dict[str, Callable[[list[Any]], Any]] = {
    "add": sum,
    "sub": lambda v: v[0] - sum(v[1:]),
    "mul": math.prod,
    "div": lambda v: v[0] / v[1],
}
SYMBOL = {"add": "+", "sub": "-", "mul": "×", "div": "/"}
VERB = {"add": "added", "sub": "subtracted", "mul": "multiplied", "div": "divided"}
MAX_CROSSING_DELTA = 10  # a misread that flips an argmax is plausible only when the gap is small

# Wording, several variants per op ("|" separates them); `_fields` fills the names in braces.
STEP_TEMPLATES: dict[str, str] = {  # stage-1 step lines
    "read": "I read {w} as {v}. | From the image, {w} is {v}. | {W}: {v} (read from the image). "
    "| Looking at the image, {w} is {v}.",
    "count": "Counting {w}: {v}. | Counting {w} in the image gives {v}. | I count {w} and get {v}.",
    "const": "{What}: {v}. | I use the known value {v} ({what}). | Known: {what}, so I take {v}.",
    "compute": "{What}: {core}. | Next, {what}: {core}. | {core} ({what}). | So {what} is {core}.",
    "argbest": "Comparing {pairs}: the {sup} value is {best}, so {w} is {v}. "
    "| The {sup} of these values is {best}, which belongs to {v}. "
    "| Among {pairs}, {v} has the {sup} value ({best}). | Of {pairs}, the {sup} is {best}: {v}.",
    "time": "Hour {h} and {m} minutes make {v}. | {m} minutes after {h}:00 is {v}. "
    "| Putting the hour {h} and the minutes {m} together, the time is {v}.",
    "round": "Rounding {a} to {p} decimal places gives {v}. | To {p} decimal places, {a} is {v}. "
    "| {a} is about {v} (rounded to {p} decimals).",
    "choose": "{x} is option ({L}). | That matches choice ({L}): {opt}. "
    "| The option that matches {x} is ({L}) {opt}.",
}
CONFIRM_TEMPLATES: dict[str, str] = {  # a review line for a step that holds
    "read": "I read {w} as {v}. The image shows {v}, so this holds. "
    "| {w} is {v} in the image, as used.",
    "count": "counting {w} again gives {v}, as before. | I recount {w} and get {v} again.",
    "const": "the constant {v} ({what}) is right. | {v} is the right constant here ({what}).",
    "other": "{core}. Redoing it gives the same, so it holds. | {core}; this checks out. "
    "| {core}, which is correct.",
}
FIX_TEMPLATES: dict[str, str] = {  # a review line for a wrong step: {s} is what was written
    "read": "the image shows {v} for {w}, not {s}. | {w} is {v} in the image, but I used {s}.",
    "count": "counting {w} again gives {v}, not {s}. | there are {v}, not {s}, when I recount {w}.",
    "choose": "{x} is option ({L}), not ({sL}). | {x} matches ({L}) {opt}, not ({sL}).",
    "swap": "the values should be {verb}, not {sverb}: {core}. | this needs {core}; the values "
    "should be {verb}, not {sverb}.",
    "compute": "{expr} is {v}, not {s}. | {expr} gives {v}; I wrote {s}.",
    "other": "it should give {v}, not {s}.",
}
OPENERS = "| Let me work through this. | I'll go step by step. | Here is my reasoning."
REVIEW_OPENERS = (
    "Checking each step against the image: | Let me verify the solution step by step. "
    "| Going back over each step:"
)


@dataclasses.dataclass(frozen=True)
class Injection:
    """One error in a worked solution: step `step` gives `used` instead of `true`."""

    type: str
    step: int
    true: Any
    used: Any
    op: str | None = None  # the operation wrongly applied (wrong_operation)

    def stats(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k != "op"}


class Version:
    """One way of working through a trace: the true one, or one with a single injected error."""

    def __init__(self, problem: dict[str, Any], error: Injection | None = None) -> None:
        self.problem, self.error = problem, error
        self.trace: list[dict[str, Any]] = problem["metadata"]["trace"]
        overrides = {error.step: error.used} if error else {}
        self.values = [
            evaluate_trace(self.trace[: i + 1], {k: v for k, v in overrides.items() if k <= i})
            for i in range(len(self.trace))
        ]
        self.ops = [step["op"] for step in self.trace]
        if error and error.op:
            self.ops[error.step] = error.op
        self.answer = format_answer(self.values[-1], problem)

    def inputs(self, i: int) -> list[Any]:
        return [self.values[a] for a in self.trace[i].get("args", [])]

    def differs(self, other: Version, i: int) -> bool:
        return self.values[i] != other.values[i] or self.ops[i] != other.ops[i]


@TEACHERS.register("procedural")
class ProceduralTeacher(Teacher):
    """Writes solutions and reviews from solution traces, injecting errors at configured rates."""

    prefix = "procedural"
    sees_images = True  # it reads the scene from the trace, which is exact
    spec_help = "procedural"

    def run(self, items: list[SynthItem], mode: str) -> Iterator[TeacherOutput]:
        if mode not in ("cas-seat", "seat"):
            raise ConfigError(f"mode: expected 'cas-seat' or 'seat', got {mode!r}")
        for item in items:
            try:
                yield self._one(item, mode)
            except Exception as exc:  # noqa: BLE001 - a bad problem is recorded, the run goes on
                yield TeacherOutput(item.pid, mode, error=_error_text(exc))

    def _one(self, item: SynthItem, mode: str) -> TeacherOutput:
        if not item.problem.get("metadata", {}).get("trace"):
            return TeacherOutput(item.pid, mode, error=NO_TRACE)
        rng = random.Random(f"{getattr(self.config, 'seed', 0)}:{item.pid}")
        inject = rng.random() < getattr(self.config, "error_rate", 0.0)
        eval_wrong = rng.random() < getattr(self.config, "eval_error_rate", 0.0)
        truth = Version(item.problem)
        if not is_correct(truth.answer, item.problem):
            answer = item.problem.get("answer")
            raise DataError(
                f"{item.pid}: trace gives {truth.answer!r} but the answer is {answer!r}"
            )
        shown = _inject(truth, rng) if inject else truth
        belief, eval_error = _belief(truth, shown, rng) if eval_wrong else (truth, None)
        voice = PLAIN if getattr(self.config, "wording", "varied") == "plain" else rng
        stats = {"injected": shown.error.stats() if shown.error else None, "eval_error": eval_error}
        stats.update(stage1_answer=shown.answer, final_answer=belief.answer)
        if mode == "seat":
            text, stats["verdicts"] = write_seat(shown, belief, voice)
            return TeacherOutput(item.pid, mode, seat=text, stats=stats)
        stage1 = write_solution(shown, voice)
        stage2, stats["verdict"] = write_review(shown, belief, voice)
        return TeacherOutput(item.pid, mode, stage1=stage1, stage2=stage2, stats=stats)


# --- error injection ---------------------------------------------------------------------------


def _inject(truth: Version, rng: random.Random) -> Version:
    """A version with one error that changes the final answer, or `truth` if none can."""
    error = _pick(truth, _candidates(truth), rng, exclude={truth.answer})
    return Version(truth.problem, error) if error else truth


def _belief(truth: Version, shown: Version, rng: random.Random) -> tuple[Version, str | None]:
    """What a wrong review believes: (a) the shown error, (b) a false error, (c) a wrong fix."""
    if shown.error is None:
        fake = _pick(truth, _candidates(truth), rng, exclude={truth.answer})
        return (Version(truth.problem, fake), "false_alarm") if fake else (truth, None)
    if rng.random() < 0.5:
        site = shown.error.step
        options = [c for c in _candidates(truth) if c.step >= site and c != shown.error]
        fix = _pick(truth, options, rng, exclude={truth.answer, shown.answer}, prefer_step=site)
        if fix:
            return Version(truth.problem, fix), "wrong_fix"
    return shown, "missed_error"


def _pick(
    truth: Version,
    candidates: list[Injection],
    rng: random.Random,
    exclude: set[str],
    prefer_step: int | None = None,
) -> Injection | None:
    """A random error type, then a random error of it, among those whose answer is new and valid."""
    valid = [c for c in candidates if _answer_with(truth, c) not in exclude | {None}]
    if prefer_step is not None:
        valid = [c for c in valid if c.step == prefer_step] or valid
    if not valid:
        return None
    kind = rng.choice(sorted({c.type for c in valid}))
    return rng.choice([c for c in valid if c.type == kind])


def _answer_with(truth: Version, error: Injection) -> str | None:
    """The answer the error leads to; None when it lands on no option of a choice problem."""
    answer = format_answer(evaluate_trace(truth.trace, {error.step: error.used}), truth.problem)
    choices = truth.problem.get("choices")
    return None if choices and answer not in choices else answer


def _candidates(truth: Version) -> list[Injection]:
    """Every single error the trace admits, whatever answer it leads to."""
    found: list[Injection] = []
    for i, step in enumerate(truth.trace):
        value = truth.values[i]
        if step["op"] == "choose":
            found += [Injection("wrong_option", i, value, c) for c in step["choices"] if c != value]
        elif _is_number(value):
            found += _numeric_candidates(truth, i)
    return found


def _numeric_candidates(truth: Version, i: int) -> list[Injection]:
    op, value = truth.trace[i]["op"], truth.values[i]
    if op == "read":
        return [Injection("misread", i, value, value + d) for d in _read_deltas(truth, i)]
    if op == "count":
        deltas = [d for d in (1, -1) if value + d >= min(1, value)]
        return [Injection("off_by_one", i, value, value + d) for d in deltas]
    if op not in COMPUTE_OPS:
        return []
    found = [Injection("arithmetic_slip", i, value, value + d) for d in _slip_deltas(value)]
    for swap in SWAPS.get(op, ()):
        found.append(Injection("wrong_operation", i, value, APPLY[swap](truth.inputs(i)), swap))
    return [c for c in found if c.used != value]


def _read_deltas(truth: Version, i: int) -> list[float]:
    value, what = truth.values[i], truth.trace[i]["what"].lower()
    if "minute" in what:
        deltas, low, high = [5, -5, 10, -10], 0, 55
    elif "hour" in what:
        deltas, low, high = [1, -1], 1, 12
    elif "angle" in what:
        deltas, low, high = [5, -5, 10, -10], 1, 179
    else:
        deltas = [1, -1, 2, -2] + ([5, -5, 10, -10] if abs(value) >= 10 else [])
        deltas += [0.5, -0.5] if value % 1 else []
        low = min(value, 1) if value > 0 else (0 if value == 0 else -math.inf)
        high = math.inf
    deltas += _crossing_deltas(truth, i)
    return [d for d in dict.fromkeys(deltas) if low <= value + d <= high]


def _crossing_deltas(truth: Version, i: int) -> list[float]:
    """Misreadings of a compared value just far enough to change which one is largest/smallest."""
    deltas: list[float] = []
    for step in truth.trace:
        if step["op"] not in ("argmax", "argmin") or i not in step["args"]:
            continue
        sign = 1 if step["op"] == "argmax" else -1
        others = [sign * truth.values[a] for a in step["args"] if a != i]
        mine, best = sign * truth.values[i], max(others)
        needed = best - mine + 1 if mine <= best else best - mine - 1
        deltas += [sign * needed] if abs(needed) <= MAX_CROSSING_DELTA else []
    return deltas


def _slip_deltas(value: float) -> list[float]:
    deltas = [1, -1, 2, -2] + ([10, -10] if abs(value) >= 10 else [])
    deltas += [0.5, -0.5] if (2 * value) % 1 == 0 and value % 1 else []
    return [d for d in deltas if value < 0 or value + d >= 0]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- writing -----------------------------------------------------------------------------------


class Voice(Protocol):
    """Picks one phrasing among variants: a `random.Random` (varied wording) or `PLAIN`."""

    def choice(self, seq: Sequence[str]) -> str: ...


class _Plain:
    """The shortest variant every time (`wording="plain"`): one terse, fixed wording."""

    def choice(self, seq: Sequence[str]) -> str:
        return min(seq, key=len)


PLAIN = _Plain()


def write_solution(version: Version, rng: Voice) -> str:
    """Stage 1: an optional opener, one line per step, the final-answer line."""
    lead = "Step {n}: " if rng is PLAIN else rng.choice(("Step {n}: ", "{n}. "))
    lines = [_say(rng, OPENERS)]
    lines += [lead.format(n=i + 1) + _step_line(version, i, rng) for i in range(len(version.trace))]
    return _join(lines + [final_line(version)])


def write_review(shown: Version, belief: Version, rng: Voice) -> tuple[str, str]:
    """Stage 2: re-derive every step of `shown` as the reviewer believes it should go.
    Returns the text and its verdict."""
    lines, fixed = [_say(rng, REVIEW_OPENERS)], False
    for i in range(len(shown.trace)):
        if not shown.differs(belief, i):
            lines.append(f"Step {i + 1}: " + _confirm(belief, i, rng))
        elif shown.inputs(i) == belief.inputs(i) or not fixed:
            lines.append(f"Step {i + 1} is wrong: " + _fix(shown, belief, i, rng))
            fixed = True
        else:
            core = _fields(belief, i)["core"]
            lines.append(f"Redoing step {i + 1} with the corrected value: {core}.")
    verdict = "Refine" if fixed else "Accept"
    closing = f"The corrected answer is {_answer_text(belief)}." if fixed else ""
    lines.append(closing or "All steps hold, so the answer stands.")
    return _join(lines + [f"{VERDICT_PREFIX} {verdict}", final_line(belief)]), verdict


def write_seat(shown: Version, belief: Version, rng: Voice) -> tuple[str, list[str]]:
    """SEAT: each step, then a [check] block ending in a verdict; the first wrong step that the
    check catches is refined and redone. Returns the text and its verdicts."""
    lines, verdicts = [], []
    site = _first_difference(shown, belief)
    for i in range(len(shown.trace)):
        head = f"Step {i + 1}: "
        if i == site:
            lines += [head + _step_line(shown, i, rng)]
            lines += ["[check] This step is wrong: " + _fix(shown, belief, i, rng)]
            lines += [f"{VERDICT_PREFIX} Refine"]
            verdicts.append("Refine")
            head = f"Step {i + 1} (redone): "
        version = shown if site is None or i < site else belief
        lines += [head + _step_line(version, i, rng), "[check] " + _cap(_confirm(version, i, rng))]
        lines += [f"{VERDICT_PREFIX} Accept"]
        verdicts.append("Accept")
    return _join(lines + [final_line(belief)]), verdicts


def _first_difference(shown: Version, belief: Version) -> int | None:
    return next((i for i in range(len(shown.trace)) if shown.differs(belief, i)), None)


def _step_line(version: Version, i: int, rng: Voice) -> str:
    return _cap(_say(rng, STEP_TEMPLATES[_kind(version.ops[i])], _fields(version, i)))


def _confirm(version: Version, i: int, rng: Voice) -> str:
    kind = version.ops[i] if version.ops[i] in CONFIRM_TEMPLATES else "other"
    return _say(rng, CONFIRM_TEMPLATES[kind], _fields(version, i))


def _say(rng: Voice, variants: str, fields: dict[str, Any] | None = None) -> str:
    """One of the "|"-separated variants, with `fields` filled in."""
    return rng.choice([v.strip() for v in variants.split("|")]).format(**(fields or {}))


def _fix(shown: Version, belief: Version, i: int, rng: Voice) -> str:
    """Why step i of `shown` is wrong and what the reviewer believes it should be."""
    fields, written, op = _fields(belief, i), _fields(shown, i), belief.ops[i]
    fields.update(
        s=written["v"], sL=written.get("L"), verb=VERB.get(op), sverb=VERB.get(shown.ops[i])
    )
    if op not in FIX_TEMPLATES:
        op = "swap" if shown.ops[i] != op else ("compute" if "expr" in fields else "other")
    return _say(rng, FIX_TEMPLATES[op], fields)


def _kind(op: str) -> str:
    if op in COMPUTE_OPS:
        return "compute"
    return "argbest" if op in ("argmax", "argmin") else op


def _fields(version: Version, i: int) -> dict[str, Any]:
    """Everything a template may name about step i: what, w (with "the"), v, core, and per op."""
    step, op, value, args = version.trace[i], version.ops[i], version.values[i], version.inputs(i)
    what = step["what"]
    the = what if what.lower().startswith(("the ", "a ")) else f"the {what}"
    fields = {"what": what, "What": _cap(what), "w": the, "W": _cap(the), "v": _num(value)}
    fields["core"] = ""
    if op in COMPUTE_OPS:
        fields["expr"] = _expr(op, args)
        fields["core"] = f"{fields['expr']} = {_num(value)}"
    elif op in ("argmax", "argmin"):
        sup, best = ("largest", max(args)) if op == "argmax" else ("smallest", min(args))
        pairs = ", ".join(
            f"{label} {_num(x)}" for label, x in zip(step["labels"], args, strict=True)
        )
        fields.update(
            sup=sup, best=_num(best), pairs=pairs, core=f"the {sup} value is {_num(best)} ({value})"
        )
    elif op == "time":
        hour, minute = _num(args[0]), _num(args[1])
        fields.update(h=hour, m=minute, core=f"{minute} minutes after {hour}:00 is {value}")
    elif op == "round":
        a, p, v = _num(args[0]), step["precision"], format_value(value, step["precision"])
        fields.update(a=a, p=p, v=v, core=f"{a} rounded to {p} decimal places is {v}")
    elif op == "choose":
        x = format_value(args[0], step.get("precision"))
        letter = _letter(step["choices"], value)
        fields.update(x=x, L=letter, opt=value, core=f"{x} is option ({letter})")
    return fields


def _expr(op: str, args: list[Any]) -> str:
    if op == "sqr":
        return f"{_num(args[0])}²"
    if op == "abs":
        return f"|{_num(args[0])}|"
    parts = [_num(x) if k == 0 or x >= 0 else f"({_num(x)})" for k, x in enumerate(args)]
    return f" {SYMBOL[op]} ".join(parts)


def final_line(version: Version) -> str:
    return final_answer_line(_answer_text(version))


def _answer_text(version: Version) -> str:
    """The answer as written: "(B) 8:10" for choice problems (the letter alone can be ambiguous
    when options are themselves letters), else the formatted value."""
    choices = version.problem.get("choices")
    if choices and version.answer in choices:
        return f"({_letter(choices, version.answer)}) {version.answer}"
    return version.answer


def _letter(choices: list[str], value: Any) -> str:
    return LETTERS[choices.index(value)] if value in choices else "?"


def _num(value: Any) -> str:
    if not _is_number(value):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _cap(text: str) -> str:
    if text[1:2] == " " and text[:1].islower():  # "r squared": a variable keeps its case
        return text
    return text[:1].upper() + text[1:]


def _join(lines: list[str]) -> str:
    return "\n".join(line for line in lines if line)
