"""Scene families: `clock`, `shape_count`, `number_line`.

An analog clock (minutes in steps of 5), a scatter of coloured shapes on a grid, and a number line
whose ticks are only partly labelled, so the marked value has to be worked out from the ticks.
Importing this module registers the families.
"""

from __future__ import annotations

import math
import random

from casseat_edge.bench.base import (
    Draft,
    add_choose,
    make_choices,
    numeric_distractors,
    pick,
    register_family,
)
from casseat_edge.bench.geometry import PALE
from casseat_edge.bench.render import BLACK, COLORS, GREY, Canvas, Point
from casseat_edge.bench.trace import TraceBuilder, clock_text, format_value

QUESTIONS = {
    "minutes_to_hour": (
        "How many minutes are left until the next full hour?",
        "According to the clock, how many minutes until it is {n} o'clock?",
    ),
    "read_time": (
        "What time does the clock show?",
        "Which time is shown on the clock face?",
        "Read the clock. What time is it?",
    ),
    "time_after": (
        "What time will the clock show {d} minutes from now?",
        "What time will it be in {d} minutes?",
    ),
    "count_color": (
        "How many {c} shapes are there?",
        "Count the {c} objects in the image. How many are there?",
        "How many shapes in the picture are {c}?",
    ),
    "count_color_shape": (
        "How many {c} {s}s are in the image?",
        "Count the {c} {s}s. How many are there?",
    ),
    "more_than": (
        "How many more {a} shapes than {b} shapes are there?",
        "There are more {a} shapes than {b} ones. By how many?",
    ),
    "number_line": (
        "What number does the {c} dot mark on the number line?",
        "Which value is at the position of the {c} point?",
        "Read the number line: what is the value of the marked point?",
    ),
}


@register_family("clock", tasks=("read_time", "minutes_to_hour", "time_after"))
def build_clock(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Analog clock; read the time, minutes to the next hour, or the time after a delay."""
    hour, minute = rng.randint(1, 12), rng.randrange(5, 60, 5)
    _draw_clock(canvas, rng, hour, minute)
    caption = (
        f"An analog clock with numbers 1 to 12 showing {clock_text(hour, minute)}: the "
        f"minute hand points at {minute // 5 or 12} and the hour hand is between "
        f"{hour} and {hour % 12 + 1}."
    )
    trace = TraceBuilder()
    if task == "minutes_to_hour":
        rm = trace.read(minute, "minutes from the long hand")
        trace.op("sub", [trace.const(60, "minutes in an hour"), rm], "minutes left in the hour")
        question = pick(rng, QUESTIONS[task], n=hour % 12 + 1)
        return Draft(task, question, caption, trace, "integer", unit="minutes")
    rh = trace.read(hour, "hour from the short hand")
    rm = trace.read(minute, "minutes from the long hand")
    if task == "read_time":
        shown = trace.op("time", [rh, rm], "time shown")
        wrong = [_swap_hands(hour, minute), *_near_times(rng, hour, minute)]
        question = pick(rng, QUESTIONS[task])
    else:
        delay = rng.randrange(10, 60, 5)
        later = trace.op("add", [rm, trace.const(delay, f"{delay} minutes later")], "minutes")
        shown = trace.op("time", [rh, later], f"time {delay} minutes later")
        no_carry = clock_text(hour, (minute + delay) % 60)
        wrong = [no_carry, clock_text(hour, minute), *_near_times(rng, hour, minute + delay)]
        question = pick(rng, QUESTIONS[task], d=delay)
    choices = make_choices(rng, trace.value, wrong)
    add_choose(trace, shown, choices)
    return Draft(task, question, caption, trace, "multi_choice", choices=choices)


def _swap_hands(hour: int, minute: int) -> str:
    return clock_text(minute // 5 or 12, (hour % 12) * 5)


def _near_times(rng: random.Random, hour: int, minute: int) -> list[str]:
    near = [(hour + 1, minute), (hour - 1, minute), (hour, minute + 5), (hour, minute - 5)]
    near += [(hour, 60 - minute), (hour, minute + 15)]
    return [clock_text(h, m) for h, m in rng.sample(near, len(near))]


def _hand(center: Point, length: float, degrees: float) -> list[Point]:
    angle = math.radians(degrees)
    return [center, (center[0] + length * math.sin(angle), center[1] - length * math.cos(angle))]


def _draw_clock(canvas: Canvas, rng: random.Random, hour: int, minute: int) -> None:
    radius = rng.uniform(118, 142)
    slack = 162 - radius
    center = (168 + rng.uniform(-slack, slack), 168 + rng.uniform(-slack, slack))
    canvas.circle(center, radius, fill=rng.choice(PALE), outline=BLACK, width=5)
    for tick in range(60):
        inner = radius * (0.86 if tick % 5 == 0 else 0.92)
        outer = _hand(center, radius * 0.97, tick * 6)[1]
        canvas.line([_hand(center, inner, tick * 6)[1], outer], width=3 if tick % 5 == 0 else 1)
    for number in range(1, 13):
        canvas.text(_hand(center, radius * 0.74, number * 30)[1], str(number), size=radius * 0.18)
    hand = rng.choice((BLACK, COLORS["blue"], (120, 30, 30)))
    hour_angle = (hour % 12) * 30 + minute * 0.5
    # the minute hand stops short of the numbers so it never hides one
    canvas.line(_hand(center, radius * 0.4, hour_angle), fill=hand, width=8)
    canvas.line(_hand(center, radius * 0.6, minute * 6), fill=hand, width=4)
    canvas.circle(center, 6, fill=hand, outline=hand)


SHAPES = ("circle", "square", "triangle")
GRID = 5


@register_family("shape_count", tasks=("count_color", "count_color_shape", "more_than"))
def build_shape_count(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Coloured circles, squares and triangles; count by colour, colour and shape, or compare."""
    palette = rng.sample(sorted(COLORS), rng.randint(3, 4))
    while True:
        items = [(rng.choice(palette), rng.choice(SHAPES)) for _ in range(rng.randint(7, 16))]
        by_color = {c: sum(1 for ic, _ in items if ic == c) for c in palette}
        if len(set(by_color.values())) >= 2 and min(by_color.values()) >= 1:
            break
    _draw_shapes(canvas, rng, items)
    trace = TraceBuilder()
    if task == "count_color":
        color = rng.choice(palette)
        _count_color(trace, items, color)
        question = pick(rng, QUESTIONS[task], c=color)
    elif task == "count_color_shape":
        color, shape = rng.choice(items)
        trace.count(items.count((color, shape)), f"{color} {shape}s")
        question = pick(rng, QUESTIONS[task], c=color, s=shape)
    else:
        more, fewer = _unequal_pair(rng, by_color)
        a = _count_color(trace, items, more)
        b = _count_color(trace, items, fewer)
        trace.op("sub", [a, b], f"{more} minus {fewer}")
        question = pick(rng, QUESTIONS[task], a=more, b=fewer)
    return Draft(task, question, _shape_caption(items), trace, "integer")


def _count_color(trace: TraceBuilder, items: list[tuple[str, str]], color: str) -> int:
    """Count one colour's shapes: per shape kind, then their sum when there are several kinds
    (each count is one group of the caption, so no step adds up in its head)."""
    groups = [s for s in SHAPES if (color, s) in items]
    counts = [trace.count(items.count((color, s)), f"{color} {s}s") for s in groups]
    if len(counts) == 1:
        return counts[0]
    return trace.op("add", counts, f"{color} shapes in all")


def _unequal_pair(rng: random.Random, by_color: dict[str, int]) -> tuple[str, str]:
    pairs = [(a, b) for a in by_color for b in by_color if by_color[a] > by_color[b]]
    return rng.choice(pairs)


def _shape_caption(items: list[tuple[str, str]]) -> str:
    groups = sorted({(c, s): items.count((c, s)) for c, s in items}.items())
    parts = [f"{n} {c} {s}{'s' if n > 1 else ''}" for (c, s), n in groups]
    return f"An image with {len(items)} shapes: " + ", ".join(parts) + "."


def _draw_shapes(canvas: Canvas, rng: random.Random, items: list[tuple[str, str]]) -> None:
    cell = 300 / GRID
    for slot, (color, shape) in zip(rng.sample(range(GRID * GRID), len(items)), items, strict=True):
        half = rng.uniform(16, 22)
        room = cell / 2 - half - 2
        x = 18 + cell * (slot % GRID + 0.5) + rng.uniform(-room, room)
        y = 18 + cell * (slot // GRID + 0.5) + rng.uniform(-room, room)
        fill = COLORS[color]
        if shape == "circle":
            canvas.circle((x, y), half, fill=fill, outline=BLACK, width=1)
        elif shape == "square":
            canvas.rectangle(
                (x - half, y - half, x + half, y + half), fill=fill, outline=BLACK, width=1
            )
        else:
            canvas.polygon(
                [(x, y - half), (x + half, y + half * 0.8), (x - half, y + half * 0.8)],
                fill=fill,
                outline=BLACK,
                width=1,
            )


@register_family("number_line", tasks=("value", "value_choice"))
def build_number_line(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Number line with partly labelled ticks; find the value at the marked point."""
    step = rng.choice((0.5, 1))
    every = 2 if step == 0.5 else rng.choice((2, 5))
    spacing = every * step
    ticks = every * rng.choice((3, 4) if every == 5 else (5, 6, 7, 8))
    start = spacing * rng.randint(-3, 4)
    mark = rng.choice([k for k in range(1, ticks) if k % every])
    label_tick = mark - mark % every
    value = start + mark * step
    precision = 1 if step == 0.5 else None
    color = rng.choice(("red", "blue", "purple"))
    _draw_number_line(canvas, rng, start, step, every, ticks, mark, COLORS[color])
    trace = TraceBuilder()
    left = trace.read(start + label_tick * step, "the nearest labelled tick left of the point")
    moves = trace.count(mark - label_tick, "ticks from that label to the point")
    size = trace.const(step, "the step between neighbouring ticks")
    trace.op("add", [left, trace.op("mul", [moves, size], "distance from the label")], "value")
    labels = [fmt(start + k * step) for k in range(0, ticks + 1, every)]
    caption = (
        f"A number line from {fmt(start)} to {fmt(start + ticks * step)} with a tick every "
        f"{fmt(step)}, labelled at {', '.join(labels)}; a {color} dot marks the tick at "
        f"{fmt(value)}."
    )
    question = pick(rng, QUESTIONS["number_line"], c=color)
    answer_type = "float" if precision else "integer"
    if task == "value":
        return Draft(task, question, caption, trace, answer_type, precision)
    near = rng.sample([step, -step, 2 * step, -2 * step], 4) + [spacing, -spacing]
    choices = make_choices(
        rng, format_value(value, precision), numeric_distractors(value, near, precision)
    )
    add_choose(trace, len(trace.steps) - 1, choices, precision=precision)
    return Draft(task, question, caption, trace, "multi_choice", choices=choices)


def fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _draw_number_line(
    canvas: Canvas,
    rng: random.Random,
    start: float,
    step: float,
    every: int,
    ticks: int,
    mark: int,
    color: tuple[int, int, int],
) -> None:
    y = rng.uniform(150, 200)
    left, right = 30 + rng.uniform(0, 8), 306 - rng.uniform(0, 8)
    gap = (right - left) / ticks
    canvas.line([(left - 18, y), (right + 18, y)], width=3)
    for end, sign in ((left - 18, -1), (right + 18, 1)):
        canvas.polygon([(end + sign * 8, y), (end, y - 6), (end, y + 6)], fill=BLACK, outline=BLACK)
    for k in range(ticks + 1):
        x = left + k * gap
        tall = k % every == 0
        canvas.line(
            [(x, y - (12 if tall else 7)), (x, y + (12 if tall else 7))],
            width=3 if tall else 2,
            fill=BLACK if tall else GREY,
        )
        if tall:
            canvas.text((x, y + 28), fmt(start + k * step), size=18)
    x = left + mark * gap
    canvas.circle((x, y), 7, fill=color, outline=color)
    canvas.polygon([(x, y - 14), (x - 8, y - 30), (x + 8, y - 30)], fill=color, outline=color)
