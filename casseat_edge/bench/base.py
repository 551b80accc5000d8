"""The family registry and what a family hands back: a `Draft` problem drawn on a `Canvas`.

A family is a function `build(rng, task, canvas) -> Draft` registered with `@register_family`
under a name and its sub-tasks. It draws the scene and returns the question, caption and solution
trace; the generator derives the answer from the trace (so the two cannot disagree), assigns the
pid, split and image path, and writes the files.

    @register_family("clock", tasks=("read_time", "minutes_to_hour"))
    def build_clock(rng: random.Random, task: str, canvas: Canvas) -> Draft: ...
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from typing import Any

from casseat_edge.bench.render import Canvas
from casseat_edge.bench.trace import TraceBuilder, format_value

CHOICE_COUNT = 4


@dataclasses.dataclass
class Draft:
    """One problem as a family produces it; `trace` holds the solution steps."""

    task: str
    question: str
    caption: str
    trace: TraceBuilder
    answer_type: str
    precision: int | None = None
    unit: str | None = None
    choices: list[str] | None = None

    @property
    def question_type(self) -> str:
        return "multi_choice" if self.choices else "free_form"


Builder = Callable[[random.Random, str, Canvas], Draft]


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered problem family: its name, sub-tasks (cycled by index) and builder."""

    name: str
    tasks: tuple[str, ...]
    build: Builder
    description: str

    def task_for(self, index: int) -> str:
        return self.tasks[index % len(self.tasks)]


_REGISTRY: dict[str, Family] = {}


def register_family(name: str, tasks: tuple[str, ...]) -> Callable[[Builder], Builder]:
    """Register `build` under `name`; a duplicate name or an empty task list fails at import."""

    def decorate(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"bench family {name!r} is registered twice")
        if not tasks or not build.__doc__:
            raise ValueError(f"bench family {name!r} needs tasks and a docstring")
        doc = build.__doc__.strip().splitlines()[0]
        _REGISTRY[name] = Family(name=name, tasks=tuple(tasks), build=build, description=doc)
        return build

    return decorate


def registry() -> dict[str, Family]:
    return _REGISTRY


def make_choices(rng: random.Random, answer: str, distractors: Iterable[str]) -> list[str]:
    """The answer plus the first three distinct distractors, shuffled; fewer is a bug."""
    picked: list[str] = []
    for option in distractors:
        if option != answer and option not in picked:
            picked.append(option)
        if len(picked) == CHOICE_COUNT - 1:
            break
    assert len(picked) == CHOICE_COUNT - 1, (answer, picked)
    choices = [answer, *picked]
    rng.shuffle(choices)
    return choices


def numeric_distractors(value: float, steps: Iterable[float], precision: int | None) -> list[str]:
    """Formatted `value + s` for each offset `s`, in order (near misses first)."""
    return [format_value(value + s, precision) for s in steps]


def add_choose(trace: TraceBuilder, arg: int, choices: list[str], **extra: Any) -> int:
    return trace.op("choose", [arg], "pick the option that matches", choices=choices, **extra)


def pick(rng: random.Random, templates: tuple[str, ...], **fields: Any) -> str:
    """One phrasing out of `templates`, filled in; varied wording across problems."""
    return rng.choice(templates).format(**fields)


def fmt_num(value: float) -> str:
    """A scene number as it is printed: 3.5 stays 3.5, 4.0 prints as 4."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
