"""The `table_lookup` family: a small table drawn as an image, then look-ups and arithmetic.

Rows are people, columns are items or days; values are distinct within each column, so column
maxima and differences are always well defined. Importing this module registers the family.
"""

from __future__ import annotations

import random

from casseat_edge.bench.base import Draft, add_choose, make_choices, pick, register_family
from casseat_edge.bench.charts import NAMES
from casseat_edge.bench.render import BLACK, Canvas
from casseat_edge.bench.trace import TraceBuilder

# (title, column pool, "How many ..." phrasing, verb for "who ... the most", largest value)
TABLE_TOPICS = (
    ("Fruit sold", ("Apples", "Pears", "Plums", "Figs"), "{low} did {row} sell", "sold", 30),
    ("Goals scored", ("Game 1", "Game 2", "Game 3"), "goals did {row} score in {col}", "scored", 9),
    ("Pages read", ("Mon", "Tue", "Wed", "Thu"), "pages did {row} read on {col}", "read", 40),
)
QUESTIONS = {
    "lookup": ("What number is in row {r}, column {c} of the table?",),
    "row_total": (
        "What is the total of {r}'s row in the table?",
        "Add up all the numbers in the row for {r}. What is the sum?",
    ),
    "difference": (
        "In the column {c}, how much larger is {h}'s number than {l}'s?",
        "What is the difference between {h} and {l} in the {c} column?",
    ),
    "column_max": (
        "Who has the largest number in the {c} column?",
        "According to the table, who {v} the most in {c}?",
    ),
}
SHADES = ((225, 235, 250), (230, 245, 230), (250, 235, 220), (235, 235, 235))


@register_family("table_lookup", tasks=("lookup", "row_total", "difference", "column_max"))
def build_table_lookup(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """A small table image; look up a cell, add a row, subtract two cells, or find a maximum."""
    title, pool, phrase, verb, largest = rng.choice(TABLE_TOPICS)
    rows = rng.sample(NAMES, rng.randint(4, 5))
    cols = sorted(rng.sample(pool, 3), key=pool.index)
    columns = [rng.sample(range(0, largest + 1), len(rows)) for _ in cols]
    grid = [[column[r] for column in columns] for r in range(len(rows))]
    _draw_table(canvas, rng, title, rows, cols, grid)
    caption = _caption(title, rows, cols, grid)
    trace = TraceBuilder()
    i, j = rng.randrange(len(rows)), rng.randrange(len(cols))
    if task == "column_max":
        return _column_max(rng, trace, rows, cols[j], [g[j] for g in grid], verb, caption)
    if task == "lookup":
        trace.read(grid[i][j], f"cell in row {rows[i]}, column {cols[j]}")
        how_many = "How many " + phrase.format(row=rows[i], col=cols[j], low=cols[j].lower())
        question = pick(rng, (*QUESTIONS[task], how_many + "?"), r=rows[i], c=cols[j])
    elif task == "row_total":
        reads = [
            trace.read(v, f"cell in row {rows[i]}, column {c}")
            for c, v in zip(cols, grid[i], strict=True)
        ]
        trace.op("add", reads, f"total of row {rows[i]}")
        question = pick(rng, QUESTIONS[task], r=rows[i])
    else:
        k = rng.choice([r for r in range(len(rows)) if r != i])
        hi, lo = (i, k) if grid[i][j] > grid[k][j] else (k, i)
        rh = trace.read(grid[hi][j], f"cell in row {rows[hi]}, column {cols[j]}")
        rl = trace.read(grid[lo][j], f"cell in row {rows[lo]}, column {cols[j]}")
        trace.op("sub", [rh, rl], f"{rows[hi]} minus {rows[lo]} in column {cols[j]}")
        question = pick(rng, QUESTIONS[task], c=cols[j], h=rows[hi], l=rows[lo])
    return Draft(task, question, caption, trace, "integer")


def _caption(title: str, rows: list[str], cols: list[str], grid: list[list[int]]) -> str:
    lines = "; ".join(
        f"{r}: " + ", ".join(f"{c}={v}" for c, v in zip(cols, vals, strict=True))
        for r, vals in zip(rows, grid, strict=True)
    )
    return f"A table titled '{title}' with columns {', '.join(cols)}. Rows: {lines}."


def _column_max(
    rng: random.Random,
    trace: TraceBuilder,
    rows: list[str],
    col: str,
    values: list[int],
    verb: str,
    caption: str,
) -> Draft:
    reads = [
        trace.read(v, f"cell in row {r}, column {col}") for r, v in zip(rows, values, strict=True)
    ]
    best = trace.op("argmax", reads, f"the row with the largest {col}", labels=list(rows))
    ranked = sorted(rows, key=lambda r: values[rows.index(r)], reverse=True)
    choices = make_choices(rng, ranked[0], ranked[1:])
    add_choose(trace, best, choices)
    question = pick(rng, QUESTIONS["column_max"], c=col, v=verb)
    return Draft("column_max", question, caption, trace, "multi_choice", choices=choices)


def _draw_table(
    canvas: Canvas,
    rng: random.Random,
    title: str,
    rows: list[str],
    cols: list[str],
    grid: list[list[int]],
) -> None:
    canvas.text((168, 30), title, size=20)
    widths = (84, 76, 76, 76)
    height = 220 / (len(rows) + 1)
    x0, y0 = 168 - sum(widths) / 2, 60
    canvas.rectangle((x0, y0, x0 + sum(widths), y0 + height), fill=rng.choice(SHADES))
    cells = [["", *cols]] + [[r, *map(str, vals)] for r, vals in zip(rows, grid, strict=True)]
    for r, line in enumerate(cells):
        x = x0
        for c, text in enumerate(line):
            box = (x, y0 + r * height, x + widths[c], y0 + (r + 1) * height)
            canvas.rectangle(box, outline=BLACK, width=1)
            canvas.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, size=17)
            x += widths[c]
