"""Geometry families: `triangle_angle`, `rectangle`, `circle`.

Measurements are printed on the figure (angles, side lengths, the radius or diameter); the
question asks for a derived quantity, so the numbers must be read from the image. Triangles are
drawn with their true angles. Importing this module registers the families.
"""

from __future__ import annotations

import math
import random

from casseat_edge.bench.base import Draft, fmt_num, pick, register_family
from casseat_edge.bench.render import BLACK, COLORS, Canvas, Point
from casseat_edge.bench.trace import TraceBuilder

PALE = ((220, 235, 250), (225, 245, 225), (250, 240, 210), (240, 228, 245), (245, 245, 245))
UNITS = ("cm", "m", "in")
TRIANGLE_BOX = (40, 60, 296, 300)
QUESTIONS = {
    "third_angle": (
        "What is the measure of the angle marked '?' in degrees?",
        "Find the unknown angle at {v} of triangle {t}.",
        "Two angles of the triangle are labelled. How many degrees is the angle at {v}?",
    ),
    "isosceles_base": (
        "The marked sides are equal. What is the angle marked '?' in degrees?",
        "Triangle {t} is isosceles with {a}{c} = {b}{c}. Find the angle at {a} in degrees.",
    ),
    "rectangle_area": (
        "What is the area of the rectangle in square {u}?",
        "Find the area of the rectangle shown ({u}²).",
        "Using the side lengths in the figure, compute the rectangle's area.",
    ),
    "rectangle_perimeter": (
        "What is the perimeter of the rectangle in {u}?",
        "How long is the boundary of the rectangle, in {u}?",
        "Using the side lengths in the figure, compute the rectangle's perimeter.",
    ),
    "circle_area": (
        "What is the area of the circle in square {u}? Round to two decimal places.",
        "Find the area of the circle ({u}²), rounded to 2 decimal places.",
    ),
    "circle_circumference": (
        "What is the circumference of the circle in {u}? Round to two decimal places.",
        "How long is the circle's circumference? Give the answer to 2 decimal places.",
    ),
}


@register_family("triangle_angle", tasks=("third_angle", "isosceles_base"))
def build_triangle_angle(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Triangle with labelled angles; find the unknown angle marked '?'."""
    if task == "third_angle":
        angles = _three_angles(rng)
    else:
        apex = rng.randrange(20, 130, 10)
        angles = [(180 - apex) / 2, (180 - apex) / 2, apex]
    names = rng.choice((("A", "B", "C"), ("P", "Q", "R"), ("X", "Y", "Z")))
    points = _fit(_triangle(angles, rng.uniform(-0.35, 0.35)), TRIANGLE_BOX)
    canvas.polygon(points, fill=rng.choice(PALE), outline=BLACK, width=3)
    trace = TraceBuilder()
    total = trace.const(180, "the angles of a triangle add up to 180°")
    if task == "third_angle":
        unknown = rng.randrange(3)
        known = [i for i in range(3) if i != unknown]
        reads = [trace.read(angles[i], f"angle at {names[i]}") for i in known]
        both = trace.op("add", reads, "sum of the two labelled angles")
        trace.op("sub", [total, both], f"angle at {names[unknown]}")
        shown = {i: f"{angles[i]}°" for i in known} | {unknown: "?"}
        caption = (
            f"A triangle {''.join(names)} with the angle at {names[known[0]]} labelled "
            f"{angles[known[0]]}°, the angle at {names[known[1]]} labelled "
            f"{angles[known[1]]}° and the angle at {names[unknown]} marked '?'."
        )
        question = pick(rng, QUESTIONS["third_angle"], v=names[unknown], t="".join(names))
    else:
        apex = trace.read(angles[2], f"angle at {names[2]}")
        rest = trace.op("sub", [total, apex], "sum of the two equal base angles")
        two = trace.const(2, "the two base angles are equal")
        trace.op("div", [rest, two], f"angle at {names[0]}")
        shown = {0: "?", 2: f"{angles[2]}°"}
        _equal_side_marks(canvas, points)
        caption = (
            f"An isosceles triangle {''.join(names)} with sides {names[0]}{names[2]} and "
            f"{names[1]}{names[2]} marked equal, the angle at {names[2]} labelled "
            f"{angles[2]}° and the angle at {names[0]} marked '?'."
        )
        a, b, c = names
        question = pick(rng, QUESTIONS["isosceles_base"], t="".join(names), a=a, b=b, c=c)
    _label_angles(canvas, points, names, shown, angles)
    return Draft(task, question, caption, trace, "integer", unit="°")


def _three_angles(rng: random.Random) -> list[int]:
    while True:
        a, b = rng.randrange(25, 115, 5), rng.randrange(25, 115, 5)
        if 180 - a - b >= 25:
            return [a, b, 180 - a - b]


def _triangle(angles: list[float], turn: float) -> list[Point]:
    """Vertices (y up) of a triangle with these angles at A, B, C; base AB turned by `turn` rad."""
    alpha, beta, gamma = (math.radians(a) for a in angles)
    side = math.sin(beta) / math.sin(gamma)
    raw = [(0.0, 0.0), (1.0, 0.0), (side * math.cos(alpha), side * math.sin(alpha))]
    cos, sin = math.cos(turn), math.sin(turn)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in raw]


def _fit(points: list[Point], box: tuple[float, float, float, float]) -> list[Point]:
    """Scale and centre `points` (y up) into `box` (y down), keeping their shape."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    scale = min((box[2] - box[0]) / (max(xs) - min(xs)), (box[3] - box[1]) / (max(ys) - min(ys)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return [(cx + (x - mx) * scale, cy - (y - my) * scale) for x, y in points]


def _label_angles(
    canvas: Canvas,
    points: list[Point],
    names: tuple[str, ...],
    shown: dict[int, str],
    angles: list[float],
) -> None:
    for i, (px, py) in enumerate(points):
        ux, uy = _bisector(points, i)
        canvas.text((px - 16 * ux, py - 16 * uy), names[i], size=20)
        if i in shown:
            # far enough in to clear both sides, but not past the middle of the shorter side
            reach = min(70.0, max(32.0, 22 / math.sin(math.radians(angles[i]) / 2)))
            reach = min(reach, 0.4 * _shorter_side(points, i))
            color = COLORS["red"] if shown[i] == "?" else BLACK
            size = 23 if shown[i] == "?" else 19
            canvas.text((px + reach * ux, py + reach * uy), shown[i], size=size, fill=color)


def _shorter_side(points: list[Point], i: int) -> float:
    px, py = points[i]
    return min(math.hypot(q[0] - px, q[1] - py) for j, q in enumerate(points) if j != i)


def _bisector(points: list[Point], i: int) -> Point:
    px, py = points[i]
    sx = sy = 0.0
    for j in range(3):
        if j != i:
            dx, dy = points[j][0] - px, points[j][1] - py
            norm = math.hypot(dx, dy)
            sx, sy = sx + dx / norm, sy + dy / norm
    norm = math.hypot(sx, sy)
    return sx / norm, sy / norm


def _equal_side_marks(canvas: Canvas, points: list[Point]) -> None:
    for end in (0, 1):
        (ax, ay), (bx, by) = points[end], points[2]
        mx, my = (ax + bx) / 2, (ay + by) / 2
        dx, dy = bx - ax, by - ay
        norm = math.hypot(dx, dy)
        nx, ny = -dy / norm * 9, dx / norm * 9
        canvas.line([(mx - nx, my - ny), (mx + nx, my + ny)], width=3)


@register_family("rectangle", tasks=("area", "perimeter"))
def build_rectangle(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Rectangle with two labelled sides (halves allowed); find its area or perimeter."""
    width, height = _side(rng, 3, 15), _side(rng, 2, 10)
    while height == width:
        height = _side(rng, 2, 10)
    unit = rng.choice(UNITS)
    _draw_rectangle(canvas, rng, width, height, unit)
    trace = TraceBuilder()
    rw = trace.read(width, "length of the bottom side")
    rh = trace.read(height, "length of the right side")
    if task == "area":
        trace.op("mul", [rw, rh], "area = width x height")
        question = pick(rng, QUESTIONS["rectangle_area"], u=unit)
        answer_unit = f"{unit}²"
    else:
        half = trace.op("add", [rw, rh], "width + height")
        two = trace.const(2, "a rectangle has two of each side")
        trace.op("mul", [half, two], "perimeter = 2 x (width + height)")
        question = pick(rng, QUESTIONS["rectangle_perimeter"], u=unit)
        answer_unit = unit
    caption = (
        f"A rectangle whose bottom side is labelled {fmt_num(width)} {unit} and whose "
        f"right side is labelled {fmt_num(height)} {unit}."
    )
    answer_type, precision = _number_kind(trace.value)
    return Draft(task, question, caption, trace, answer_type, precision, answer_unit)


def _side(rng: random.Random, low: int, high: int) -> float | int:
    whole = rng.randint(low, high)
    return whole + 0.5 if rng.random() < 0.4 else whole


def _number_kind(value: float) -> tuple[str, int | None]:
    """Exact values only: an integer, or a float with just the decimals it needs (1 or 2)."""
    if float(value).is_integer():
        return "integer", None
    return "float", 1 if float(value * 10).is_integer() else 2


def _draw_rectangle(
    canvas: Canvas, rng: random.Random, width: float, height: float, unit: str
) -> None:
    scale = min(200 / width, 190 / height) * rng.uniform(0.85, 1.0)
    cx, cy = rng.uniform(130, 145), rng.uniform(160, 175)
    left, right = cx - width * scale / 2, cx + width * scale / 2
    top, bottom = cy - height * scale / 2, cy + height * scale / 2
    canvas.rectangle((left, top, right, bottom), fill=rng.choice(PALE), outline=BLACK, width=3)
    for x, y, sx, sy in ((left, bottom, 1, -1), (right, bottom, -1, -1), (right, top, -1, 1)):
        canvas.line([(x + 10 * sx, y), (x + 10 * sx, y + 10 * sy), (x, y + 10 * sy)], width=1)
    canvas.text((cx, bottom + 20), f"{fmt_num(width)} {unit}", size=20)
    canvas.text((right + 10, cy), f"{fmt_num(height)} {unit}", size=20, anchor="lm")


@register_family("circle", tasks=("area", "circumference"))
def build_circle(rng: random.Random, task: str, canvas: Canvas) -> Draft:
    """Circle with a labelled radius or diameter; area or circumference to 2 decimals."""
    radius = _side(rng, 1, 12)
    unit = rng.choice(UNITS)
    use_diameter = rng.random() < 0.35
    _draw_circle(canvas, rng, radius, unit, use_diameter)
    trace = TraceBuilder()
    pi = trace.const(math.pi, "pi")
    if use_diameter:
        d = trace.read(radius * 2, "the labelled diameter d")
        r = trace.op("div", [d, trace.const(2, "radius is half the diameter")], "radius r")
        shown = f"diameter labelled d = {fmt_num(radius * 2)} {unit}"
    else:
        r = trace.read(radius, "the labelled radius r")
        shown = f"radius labelled r = {fmt_num(radius)} {unit}"
    if task == "area":
        raw = trace.op("mul", [pi, trace.op("sqr", [r], "r squared")], "area = pi r^2")
        question = pick(rng, QUESTIONS["circle_area"], u=unit)
        answer_unit = f"{unit}²"
    else:
        two = trace.const(2, "circumference is 2 pi r")
        raw = trace.op("mul", [two, pi, r], "circumference = 2 pi r")
        question = pick(rng, QUESTIONS["circle_circumference"], u=unit)
        answer_unit = unit
    trace.op("round", [raw], "round to 2 decimals", precision=2)
    caption = f"A circle with its {shown}."
    return Draft(task, question, caption, trace, "float", 2, answer_unit)


def _draw_circle(
    canvas: Canvas, rng: random.Random, radius: float, unit: str, use_diameter: bool
) -> None:
    size = rng.uniform(95, 125)
    cx, cy = rng.uniform(160, 176), rng.uniform(168, 184)
    canvas.circle((cx, cy), size, fill=rng.choice(PALE), outline=BLACK, width=3)
    canvas.circle((cx, cy), 4, fill=BLACK, outline=BLACK)
    if use_diameter:
        canvas.line([(cx - size, cy), (cx + size, cy)], fill=COLORS["blue"], width=3)
        canvas.text((cx, cy - 18), f"d = {fmt_num(radius * 2)} {unit}", size=21)
        return
    side = rng.choice((-1, 1))
    canvas.line([(cx, cy), (cx + side * size, cy)], fill=COLORS["blue"], width=3)
    canvas.text((cx + side * size / 2, cy - 18), f"r = {fmt_num(radius)} {unit}", size=21)
