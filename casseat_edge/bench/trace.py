"""Machine-readable solution traces: build them, re-execute them, format their final value.

Every benchmark problem carries `metadata.trace`, a list of steps. A step is a dict with `op`,
`args` (indices of earlier steps), `value` and a human `what`; some ops carry extra keys
(`labels`, `precision`, `choices`). Leaf steps (`read`, `count`, `const`) hold values taken from
the image or known constants; every other op is recomputed from its arguments, so a caller can
override a leaf (a "misread") and get the answer that misreading leads to:

    trace = row["metadata"]["trace"]
    evaluate_trace(trace)                       # the value behind row["answer"]
    wrong = evaluate_trace(trace, {0: 9})       # step 0 misread as 9
    format_answer(wrong, row)                   # the answer string a misreading model would give

Ops: read, count, const (leaves); add, sub, mul, div, sqr, abs (arithmetic); argmax, argmin
(value is the label of the largest/smallest argument, labels in `labels`); time (hour, minute ->
"h:mm"); round (to `precision` decimals); choose (the option in `choices` whose text equals the
formatted argument, or that formatted text itself when no option matches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from casseat_edge.errors import DataError

LEAF_OPS = ("read", "count", "const")


def _product(values: Sequence[Any], step: dict[str, Any]) -> Any:
    return math.prod(values)


def _argbest(pick: Callable[..., Any]) -> Callable[[Sequence[Any], dict[str, Any]], Any]:
    def run(values: Sequence[Any], step: dict[str, Any]) -> Any:
        best = pick(range(len(values)), key=lambda i: values[i])
        return step["labels"][best]

    return run


def clock_text(hour: int, minute: int) -> str:
    """'h:mm' on a 12-hour dial; minutes past 59 or below 0 carry into the hour."""
    hour += minute // 60
    return f"{(hour - 1) % 12 + 1}:{minute % 60:02d}"


def _time(values: Sequence[Any], step: dict[str, Any]) -> str:
    hour, minute = (int(round(v)) for v in values)
    return clock_text(hour, minute)


def _choose(values: Sequence[Any], step: dict[str, Any]) -> str:
    text = format_value(values[0], step.get("precision"))
    return next((c for c in step["choices"] if c == text), text)


_ARITY: dict[str, int | None] = {
    "add": None,
    "mul": None,
    "sub": 2,
    "div": 2,
    "sqr": 1,
    "abs": 1,
    "round": 1,
    "choose": 1,
    "time": 2,
    "argmax": None,
    "argmin": None,
}

_OPS: dict[str, Callable[[Sequence[Any], dict[str, Any]], Any]] = {
    "add": lambda v, s: sum(v),
    "sub": lambda v, s: v[0] - v[1],
    "mul": _product,
    "div": lambda v, s: v[0] / v[1],
    "sqr": lambda v, s: v[0] * v[0],
    "abs": lambda v, s: abs(v[0]),
    "round": lambda v, s: round(v[0], s["precision"]),
    "choose": _choose,
    "time": _time,
    "argmax": _argbest(max),
    "argmin": _argbest(min),
}

OPS = LEAF_OPS + tuple(_OPS)


def evaluate_trace(trace: list[dict[str, Any]], overrides: Mapping[int, Any] | None = None) -> Any:
    """Re-execute `trace` and return its last step's value; `overrides` replaces step values."""
    if not trace:
        raise DataError("trace: empty; a trace needs at least one step")
    overrides = overrides or {}
    stray = sorted(i for i in overrides if not isinstance(i, int) or not 0 <= i < len(trace))
    if stray:
        raise DataError(f"trace: overrides: step {stray[0]!r} not in 0..{len(trace) - 1}")
    values: list[Any] = []
    for index, step in enumerate(trace):
        if index in overrides:
            values.append(overrides[index])
        else:
            values.append(_run_step(index, step, values))
    return values[-1]


def _run_step(index: int, step: dict[str, Any], values: list[Any]) -> Any:
    op = step.get("op")
    if op in LEAF_OPS:
        return step["value"]
    if op not in _OPS:
        raise DataError(f"trace step {index}: op: unknown {op!r}; expected one of {', '.join(OPS)}")
    args = step.get("args", [])
    if any(not isinstance(a, int) or not 0 <= a < index for a in args):
        raise DataError(
            f"trace step {index}: args: {args} must index earlier steps (0..{index - 1})"
        )
    arity = _ARITY[op]
    if (arity is not None and len(args) != arity) or not args:
        raise DataError(
            f"trace step {index}: args: {op} takes {arity or '1+'} args, got {len(args)}"
        )
    return _OPS[op]([values[a] for a in args], step)


def format_value(value: Any, precision: int | None) -> str:
    """A number as answer text: `precision` decimals, or an integer when `precision` is None."""
    if isinstance(value, str):
        return value
    if precision is None:
        return str(int(round(value)))
    text = f"{value:.{precision}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_answer(value: Any, problem: Mapping[str, Any]) -> str:
    """Turn a trace's final value into answer text per the problem's answer_type and precision."""
    answer_type = problem["answer_type"]
    if answer_type == "integer":
        return format_value(value, None)
    if answer_type == "float":
        precision = problem.get("precision")
        return format_value(value, 1 if precision is None else int(precision))
    return format_value(value, problem.get("precision")) if not isinstance(value, str) else value


class TraceBuilder:
    """Appends steps and returns their indices, computing derived values as it goes.

    b = TraceBuilder(); a = b.read(7, "bar A"); c = b.read(5, "bar C"); b.op("add", [a, c], "sum")
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def leaf(self, op: str, value: Any, what: str) -> int:
        assert op in LEAF_OPS, op
        self.steps.append({"op": op, "args": [], "value": value, "what": what})
        return len(self.steps) - 1

    def read(self, value: Any, what: str) -> int:
        return self.leaf("read", value, what)

    def count(self, value: int, what: str) -> int:
        return self.leaf("count", value, what)

    def const(self, value: Any, what: str) -> int:
        return self.leaf("const", value, what)

    def op(self, op: str, args: list[int], what: str, **extra: Any) -> int:
        step = {"op": op, "args": list(args), "value": None, "what": what, **extra}
        step["value"] = _run_step(len(self.steps), step, [s["value"] for s in self.steps])
        self.steps.append(step)
        return len(self.steps) - 1

    @property
    def value(self) -> Any:
        return self.steps[-1]["value"]
