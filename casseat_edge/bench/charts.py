"""Chart families: `bar_chart` and `line_plot`.

Values are printed next to bars and points, so every answer can be read exactly from the
image; the question names a category, never its value. Importing this module registers the
families (see `casseat_edge.bench.base`).
"""

from __future__ import annotations

import random

from casseat_edge.bench.base import Draft, add_choose, make_choices, pick, register_family
from casseat_edge.bench.render import BLACK, COLORS, GREY, LIGHT_GREY, WHITE, Canvas
from casseat_edge.bench.trace import TraceBuilder

NAMES = ("Ann", "Ben", "Cal", "Dee", "Eva", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lee")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LETTERS = tuple("ABCDEFGH")

# (title, category labels, what is counted, how a category is named in a question)
BAR_TOPICS = (
    ("Books read", NAMES, "books", "{}"),
    ("Cups sold", DAYS, "cups", "{}"),
    ("Votes", LETTERS, "votes", "option {}"),
    ("Points scored", LETTERS, "points", "team {}"),
)
# (title, x labels, what is plotted, how an x is named, the preposition before it)
LINE_TOPICS = (
    ("Visitors (hundreds)", MONTHS, "visitor count (hundreds)", "{}", "in"),
    ("Rainfall (mm)", MONTHS, "rainfall (mm)", "{}", "in"),
    ("Sales", tuple(str(y) for y in range(2012, 2024)), "sales figure", "{}", "in"),
    ("Value", tuple(str(x) for x in range(0, 12)), "value of y", "x = {}", "at"),
)

BAR_QUESTIONS = {
    "read": (
        "How many {noun} does the bar for {x} show?",
        "What is the value of the bar labelled {la}?",
        "According to the chart, how many {noun} are there for {x}?",
    ),
    "sum": (
        "What is the total number of {noun} for {x} and {y} together?",
        "Add the values of the bars {la} and {lb}. What do you get?",
        "How many {noun} do {x} and {y} have combined?",
    ),
    "difference": (
        "How many more {noun} does {x} have than {y}?",
        "By how much is the bar {la} taller than the bar {lb}?",
    ),
    "extreme": (
        "Which bar is the {task}?",
        "Which category has the {most} {noun}?",
        "Which label belongs to the {task} bar in the chart?",
    ),
}
LINE_QUESTIONS = {
    "value_at": (
        "What is the {noun} {w}?",
        "According to the line plot, what value is shown {w}?",
        "Read the plot: what is the {noun} {w}?",
    ),
    "difference": (
        "By how much does the {noun} change from {x} to {y}? Answer negative for a decrease.",
        "What is the value {wy} minus the value {wx}?",
    ),
    "peak": (
        "At which point on the x-axis is the {noun} highest?",
        "Where does the line reach its maximum?",
    ),
}

PLOT = (56, 60, 316, 280)  # left, top, right, bottom of the chart area


def _axes(canvas: Canvas, title: str, top: int, step: int) -> None:
    left, upper, right, bottom = PLOT
    canvas.text(((left + right) / 2, 28), title, size=20)
    for tick in range(0, top + 1, step):
        y = bottom - (bottom - upper) * tick / top
        canvas.line([(left, y), (right, y)], fill=LIGHT_GREY, width=1)
        canvas.text((left - 8, y), str(tick), size=14, fill=GREY, anchor="rm")
    canvas.line([(left, upper), (left, bottom), (right, bottom)], width=2)


def _scale_top(largest: int) -> tuple[int, int]:
    step = 5 if largest <= 30 else 10
    return step * (largest // step + 1), step


def _y(value: float, top: int) -> float:
    return PLOT[3] - (PLOT[3] - PLOT[1]) * value / top


@register_family("bar_chart", tasks=("read", "largest", "sum", "smallest", "difference"))
def build_bar_chart(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Vertical bar chart with value labels; read, compare or combine bars."""
    title, pool, noun, naming = rng.choice(BAR_TOPICS)
    count = rng.randint(4, 6)
    labels = sorted(rng.sample(pool, count), key=pool.index)
    values = rng.sample(range(1, rng.choice((20, 30, 45)) + 1), count)
    _draw_bars(canvas, rng, title, labels, values)
    pairs = ", ".join(f"{lab}={val}" for lab, val in zip(labels, values, strict=True))
    caption = f"A bar chart titled '{title}' with {count} bars: {pairs}."
    name = dict(zip(labels, (naming.format(lab) for lab in labels), strict=True))
    trace = TraceBuilder()
    if task in ("largest", "smallest"):
        bars = dict(zip(labels, values, strict=True))
        return _bar_extreme(rng, task, trace, bars, noun, caption)
    a, b = rng.sample(range(count), 2)
    if task == "read":
        trace.read(values[a], f"height of the bar {labels[a]}")
        question = pick(rng, BAR_QUESTIONS[task], noun=noun, x=name[labels[a]], la=labels[a])
    elif task == "sum":
        ra = trace.read(values[a], f"height of the bar {labels[a]}")
        rb = trace.read(values[b], f"height of the bar {labels[b]}")
        trace.op("add", [ra, rb], f"total of {labels[a]} and {labels[b]}")
        x, y, la, lb = name[labels[a]], name[labels[b]], labels[a], labels[b]
        question = pick(rng, BAR_QUESTIONS[task], noun=noun, x=x, y=y, la=la, lb=lb)
    else:
        hi, lo = (a, b) if values[a] > values[b] else (b, a)
        rh = trace.read(values[hi], f"height of the bar {labels[hi]}")
        rl = trace.read(values[lo], f"height of the bar {labels[lo]}")
        trace.op("sub", [rh, rl], f"{labels[hi]} minus {labels[lo]}")
        x, y, la, lb = name[labels[hi]], name[labels[lo]], labels[hi], labels[lo]
        question = pick(rng, BAR_QUESTIONS[task], noun=noun, x=x, y=y, la=la, lb=lb)
    return Draft(task, question, caption, trace, "integer")


def _draw_bars(
    canvas: Canvas, rng: random.Random, title: str, labels: list[str], values: list[int]
) -> None:
    top, step = _scale_top(max(values))
    _axes(canvas, title, top, step)
    left, _, right, bottom = PLOT
    slot = (right - left) / len(values)
    width = slot * rng.uniform(0.5, 0.7)
    colors = rng.sample(sorted(COLORS), len(values)) if rng.random() < 0.4 else None
    single = COLORS[rng.choice(sorted(COLORS))]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = left + slot * (i + 0.5)
        y = _y(value, top)
        fill = COLORS[colors[i]] if colors else single
        box = (x - width / 2, y, x + width / 2, bottom)
        canvas.rectangle(box, fill=fill, outline=BLACK, width=1)
        canvas.text((x, y - 11), str(value), size=16)
        canvas.text((x, bottom + 16), label, size=15)


def _bar_extreme(
    rng: random.Random,
    task: str,
    trace: TraceBuilder,
    bars: dict[str, int],
    noun: str,
    caption: str,
) -> Draft:
    labels, values = list(bars), list(bars.values())
    reads = [trace.read(v, f"height of the bar {lab}") for lab, v in bars.items()]
    op = "argmax" if task == "largest" else "argmin"
    best = trace.op(op, reads, f"the bar with the {task} value", labels=list(labels))
    ranked = sorted(labels, key=lambda lab: values[labels.index(lab)], reverse=task == "largest")
    choices = make_choices(rng, ranked[0], ranked[1:])
    add_choose(trace, best, choices)
    most = "most" if task == "largest" else "fewest"
    tallest = "tallest" if task == "largest" else "shortest"
    question = pick(rng, BAR_QUESTIONS["extreme"], task=tallest, most=most, noun=noun)
    return Draft(task, question, caption, trace, "multi_choice", choices=choices)


@register_family("line_plot", tasks=("value_at", "difference", "peak"))
def build_line_plot(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Line plot with labelled points; read a point, subtract two, or find the peak."""
    title, pool, noun, naming, prep = rng.choice(LINE_TOPICS)
    count = rng.randint(5, 8 if len(pool[0]) <= 3 else 6)  # 4-character years need room
    start = rng.randint(0, len(pool) - count)
    xs = list(pool[start : start + count])
    ys = _walk(rng, count)
    _draw_line(canvas, rng, title, xs, ys)
    pairs = ", ".join(f"{x}: {y}" for x, y in zip(xs, ys, strict=True))
    caption = f"A line plot titled '{title}' with points {pairs}."
    name = {x: naming.format(x) for x in xs}
    where = {x: f"{prep} {name[x]}" for x in xs}
    trace = TraceBuilder()
    if task == "peak":
        reads = [trace.read(y, f"value {where[x]}") for x, y in zip(xs, ys, strict=True)]
        best = trace.op("argmax", reads, "the x with the highest value", labels=xs)
        ranked = sorted(xs, key=lambda x: ys[xs.index(x)], reverse=True)
        choices = make_choices(rng, ranked[0], ranked[1:])
        add_choose(trace, best, choices)
        question = pick(rng, LINE_QUESTIONS[task], noun=noun)
        return Draft(task, question, caption, trace, "multi_choice", choices=choices)
    a, b = sorted(rng.sample(range(count), 2))
    if task == "value_at":
        trace.read(ys[a], f"value {where[xs[a]]}")
        question = pick(rng, LINE_QUESTIONS[task], noun=noun, w=where[xs[a]])
        return Draft(task, question, caption, trace, "integer")
    ra = trace.read(ys[a], f"value {where[xs[a]]}")
    rb = trace.read(ys[b], f"value {where[xs[b]]}")
    trace.op("sub", [rb, ra], f"value at {xs[b]} minus value at {xs[a]}")
    x, y, wx, wy = name[xs[a]], name[xs[b]], where[xs[a]], where[xs[b]]
    question = pick(rng, LINE_QUESTIONS[task], noun=noun, x=x, y=y, wx=wx, wy=wy)
    return Draft(task, question, caption, trace, "integer")


def _walk(rng: random.Random, count: int) -> list[int]:
    """Integer values with a distinct maximum, moving like a plausible series."""
    while True:
        ys = [rng.randint(5, 35)]
        for _ in range(count - 1):
            ys.append(min(48, max(1, ys[-1] + rng.randint(-9, 9))))
        if ys.count(max(ys)) == 1:
            return ys


def _draw_line(
    canvas: Canvas, rng: random.Random, title: str, xs: list[str], ys: list[int]
) -> None:
    top, step = _scale_top(max(ys))
    _axes(canvas, title, top, step)
    left, _, right, bottom = PLOT
    slot = (right - left) / len(xs)
    color = COLORS[rng.choice(("red", "blue", "green", "purple"))]
    points = [(left + slot * (i + 0.5), _y(y, top)) for i, y in enumerate(ys)]
    canvas.line(points, fill=color, width=3)
    for (px, py), x, y in zip(points, xs, ys, strict=True):
        canvas.circle((px, py), 5, fill=color, outline=color)
        canvas.text((px, py - 15), str(y), size=15, halo=WHITE)
        canvas.text((px, bottom + 16), x, size=13 if len(x) > 3 else 15)
