"""Offline, rule-based answer extraction and checking for math VQA benchmarks.

`extract(response, problem)` finds the answer text in a model response and normalizes it for the
problem's answer type; `is_correct(prediction, problem)` normalizes the prediction and the ground
truth the same way and compares them. The rules follow MathVista's evaluation as lmms-eval and
VLMEvalKit apply it without a GPT extractor, plus MATH-Vision's `\\boxed{}` answers, so scores are
reproducible without an API key (report them as "rule-extracted", not as GPT-judged numbers).

    text = extract(model_output, problem)  # "12", "3.10", the option text, or None
    ok = is_correct(text, problem)

Where the answer text comes from, first hit wins: our last `Final answer:` line, the last
`\\boxed{}`/`\\fbox{}`, the last `<answer>...</answer>` tag, the last "the answer is ..." phrasing,
and a one-line response itself. `normalize` is the second phase on its own.

Responses are untrusted text of any length: every pattern runs in linear time, the answer line or
sentence is read up to MAX_PHRASE_CHARS, and markup is peeled at most MAX_MARKUP_LAYERS deep, so
a 100 KB adversarial response is extracted in tens of milliseconds. A problem's `precision` must
be 0..MAX_PRECISION decimal places (`DataError` otherwise); wrong argument types are TypeErrors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from casseat_edge.errors import DataError

FINAL_ANSWER_PREFIX = "Final answer:"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHORT_RESPONSE_CHARS = 100  # a one-line response up to this long is taken as the answer itself
MAX_NUMBER_CHARS = 400  # longer digit runs are not answers; int() refuses over 4300 digits anyway
MAX_PHRASE_CHARS = 1000  # an answer sentence is short; the cap keeps many phrasings linear
MAX_MARKUP_LAYERS = 16  # '**$\\(12\\)$**.' is 4 layers; '"' * 100_000 would be 50_000 passes
MAX_DISTANCE_CHARS = 500  # edit distance is quadratic, so longer candidates are cut
FLOAT_TOLERANCE = 1e-9  # float answers without a precision compare within this
MAX_PRECISION = 15  # decimal places; a double holds 15-17 significant digits, and `:.{n}f` is O(n)

# Every pattern here runs on untrusted model output, so none may backtrack quadratically: runs of
# spaces then emphasis then spaces are written `[ \t]*(?:[*_]+[ \t]*)?`, the same language as
# `[ \t]*[*_]*[ \t]*` without its O(n^2) ways of splitting a long run of blanks.
_MARK = r"[ \t]*(?:[*_]+[ \t]*)?"
# `\s*` after the colon lets the value sit on the next line ("Final answer:\n12"); the line is read
# up to MAX_PHRASE_CHARS, as an answer sentence is.
_FINAL_LINE = re.compile(
    rf"final[ \t]+answer{_MARK}[:：]\s*[*_]*[ \t]*([^\n]{{0,{MAX_PHRASE_CHARS}}})", re.I
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAGS = re.compile(r"<(/?)answer>", re.I)
_PHRASE = re.compile(
    r"\bthe\s+(?:final\s+|correct\s+|right\s+|best\s+)?(?:answer|option|choice)\s+"
    rf"(?:is|should\s+be)\b|\banswer{_MARK}:",
    re.I,
)
_AFTER_PHRASE = re.compile(rf"[ \t:*_\r\n]*([^\n]{{0,{MAX_PHRASE_CHARS}}})")
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_PAIRS = (("\\(", "\\)"), ("\\[", "\\]"), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"))

_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°|º")
_UNIT_EXPONENT = re.compile(r"(?<=[A-Za-z])\s*\^\s*\{?\s*[0-9]\s*\}?|[²³]")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_DIGITS = re.compile(r"\\[dt]?frac\s*([0-9])\s*([0-9])")
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_UNSIGNED = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
# A leading minus is a sign only when it does not follow an operand ("12 - 3" is a subtraction).
_NUMBER = re.compile(
    rf"(?:(?<![\w)\]}}])(?<![0-9)\]}}]\s)[-+])?{_UNSIGNED}(?:[eE][-+]?[0-9]{{1,3}})?"
    rf"(?:\s*/\s*{_UNSIGNED})?"
)
_WORDS = (  # spelled-out counts, only read when a candidate has no digits at all
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen", "twenty"),
)
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.I | re.A)

_LETTER_FORMS = (
    re.compile(r"^\(?([A-Za-z])\)?$"),  # B, (B), B), (b)
    re.compile(r"^\(([A-Za-z])\)"),  # (B) 145°
    re.compile(r"^([A-Z])\s*[.:)]"),  # B. 145°, B: 145°, B) 145°
    re.compile(r"\b(?:option|choice)\s*\(?([A-Za-z])\)?(?!\w)", re.I | re.A),  # option B
)
_STANDALONE_LETTER = re.compile(r"\b([A-Z])\b")


def final_answer_line(value: str) -> str:
    """Our one-line final answer: `final_answer_line("12")` -> "Final answer: 12"."""
    return f"{FINAL_ANSWER_PREFIX} {' '.join(str(value).split())}"


def extract(response: str, problem: dict[str, Any], *, strict: bool = False) -> str | None:
    """The normalized answer in `response` for `problem`, or None when none is found.

    `strict` (for filtering training data, not for scoring) refuses the benchmark rules' lenient
    guesses: no nearest-option fallback, and no truncation of a non-integer to an integer."""
    if not isinstance(response, str):
        raise TypeError(
            f"extract: response must be the model's reply as a str, found {type(response).__name__}"
        )
    _check_problem(problem, "extract")
    candidate = candidate_text(response)
    return None if candidate is None else normalize(candidate, problem, strict=strict)


def is_correct(prediction: str | None, problem: dict[str, Any]) -> bool:
    """Whether `prediction` (raw candidate text or a normalized value) matches the answer."""
    _check_problem(problem, "is_correct")
    _check_value(prediction, "is_correct", "prediction")
    if prediction is None or problem.get("answer") is None:
        return False
    if isinstance(problem["answer"], bool) or not isinstance(problem["answer"], (str, int, float)):
        raise DataError(
            f"problem {problem.get('pid')!r}: answer: expected a string or number, "
            f"found {_short_repr(problem['answer'])}"
        )
    predicted = normalize(prediction, problem)
    expected = normalize(problem["answer"], problem)
    if predicted is None or expected is None:
        return False
    kind = answer_kind(problem)
    if kind == "integer":
        return int(predicted) == int(expected)
    if kind == "float":
        return _floats_equal(float(predicted), float(expected), problem.get("precision"))
    if kind == "multi_choice":
        return predicted == expected
    return predicted.casefold() == expected.casefold()


def normalize(value: str, problem: dict[str, Any], *, strict: bool = False) -> str | None:
    """Candidate text -> the canonical answer string for `problem`'s type, or None if unusable."""
    _check_problem(problem, "normalize")
    _check_value(value, "normalize", "value")
    if value is None:
        return None
    text = str(value)
    kind = answer_kind(problem)
    if kind == "multi_choice":
        return _normalize_choice(text, problem, strict)
    if kind in ("integer", "float"):
        number = parse_number(text, _unit(problem))
        if number is None or (strict and kind == "integer" and number.denominator != 1):
            return None
        return _format_number(number, kind, answer_precision(problem))
    return _normalize_text(text)


def answer_kind(problem: dict[str, Any]) -> str:
    """multi_choice when the problem has choices (MathVista types them "text"), else answer_type."""
    if problem.get("choices") or problem.get("answer_type") == "multi_choice":
        return "multi_choice"
    kind = problem.get("answer_type")
    return kind if kind in ("integer", "float") else "text"


def answer_precision(problem: dict[str, Any]) -> int | None:
    """The problem's `precision` (decimal places a float answer is rounded to), checked: an int
    in 0..MAX_PRECISION or None; anything else is a `DataError` naming the problem."""
    try:
        return check_precision(problem.get("precision"))
    except ValueError as exc:
        raise DataError(
            f"problem {problem.get('pid')!r}: precision: {exc}; fix the problem row"
        ) from None


def check_precision(precision: Any) -> int | None:
    """`precision` as an int in 0..MAX_PRECISION (an integral float is accepted) or None;
    anything else is a ValueError saying what was expected and found."""
    if isinstance(precision, float) and precision.is_integer():
        precision = int(precision)
    if precision is None or (
        isinstance(precision, int)
        and not isinstance(precision, bool)
        and 0 <= precision <= MAX_PRECISION
    ):
        return precision
    raise ValueError(
        f"expected decimal places 0..{MAX_PRECISION} or null, found {_short_repr(precision)}"
    )


def _unit(problem: dict[str, Any]) -> str | None:
    unit = problem.get("unit")
    if unit is None or isinstance(unit, str):
        return unit
    raise DataError(
        f"problem {problem.get('pid')!r}: unit: expected a string or null, found {unit!r}"
    )


def _check_problem(problem: Any, func: str) -> None:
    if not isinstance(problem, Mapping):
        raise TypeError(
            f"{func}: problem must be a problem row (dict), found {type(problem).__name__}"
        )


def _check_value(value: Any, func: str, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
        raise TypeError(
            f"{func}: {name} must be a str, a number or None, found {type(value).__name__}"
        )


def _short_repr(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 128:  # repr of 10**5000 itself raises
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- phase 1: where the answer text is ---------------------------------------------------------


def candidate_text(response: str) -> str | None:
    """The raw answer text in `response`, by the priority in the module docstring, or None."""
    finders: tuple[Callable[[str], str | None], ...] = (
        _final_line,
        last_boxed,
        _answer_tag,
        _answer_phrase,
        _short_response,
    )
    for finder in finders:
        found = finder(response)
        if found and found.strip():
            return found.strip()
    return None


def _final_line(text: str) -> str | None:
    for match in reversed(list(_FINAL_LINE.finditer(text))):
        if _strip_markup(match.group(1)):
            return match.group(1)
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}`/`\\fbox{...}` (nested braces kept)."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    closing = _matching_braces(text)
    for start in reversed(starts):
        if start - 1 in closing:  # an unclosed box (truncated response) is skipped
            return text[start : closing[start - 1]]
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each `{` -> position of its `}`, in one pass (many boxes stay linear)."""
    opened: list[int] = []
    pairs: dict[int, int] = {}
    for i, char in enumerate(text):
        if char == "{":
            opened.append(i)
        elif char == "}" and opened:
            pairs[opened.pop()] = i
    return pairs


def _answer_tag(text: str) -> str | None:
    """The last `<answer>...</answer>` content, pairing tags as a lazy `<answer>(.*?)</answer>`
    scan would (an `<answer>` inside an open one is content), in one pass over the tags: the
    regex itself rescans to the end from every unclosed `<answer>`."""
    start, found = None, None
    for tag in _ANSWER_TAGS.finditer(text):
        if not tag.group(1) and start is None:
            start = tag.end()
        elif tag.group(1) and start is not None:
            found, start = text[start : tag.start()], None
    return found


def _answer_phrase(text: str) -> str | None:
    for match in reversed(list(_PHRASE.finditer(text))):
        line = _AFTER_PHRASE.match(text, match.end()).group(1)
        sentence = _SENTENCE_END.split(line, maxsplit=1)[0]
        if sentence.strip():
            return sentence
    return None


def _short_response(text: str) -> str | None:
    text = text.strip()
    return text if "\n" not in text and len(text) <= SHORT_RESPONSE_CHARS else None


# --- phase 2: normalization by answer type -----------------------------------------------------


def _strip_markup(text: str) -> str:
    """Drop boxes, \\text{}, markdown emphasis, $, matching quotes and a trailing period."""
    boxed = last_boxed(text)
    text = _TEXT_CMD.sub(r"\1", boxed if boxed is not None else text)
    for _ in range(MAX_MARKUP_LAYERS):  # a layer a pass, each pass O(len(text))
        previous = text
        text = text.strip().strip("*`$").strip()
        for opening, closing in _PAIRS:
            if len(text) >= len(opening) + len(closing) and text.startswith(opening):
                text = text[len(opening) : -len(closing)] if text.endswith(closing) else text
        text = text.rstrip(".")
        if text == previous:
            break
    return " ".join(text.split())


def _normalize_text(text: str) -> str | None:
    return _strip_markup(text) or None


def parse_number(text: str, unit: str | None = None) -> Fraction | None:
    """The last number in `text` (units, LaTeX, separators and fractions handled), exactly."""
    text = _numeric_text(text, unit)
    tokens = _NUMBER.findall(text)
    if not tokens:
        words = _WORD_NUMBER.findall(text)
        return Fraction(_WORDS.index(words[-1].lower())) if words else None
    return _to_fraction(tokens[-1])


def _numeric_text(text: str, unit: str | None) -> str:
    text = _strip_markup(text).replace("\u2212", "-")
    for spacing in ("{,}", "\\,", "\\!", "\\%", "\\$"):
        text = text.replace(spacing, "")
    text = _UNIT_EXPONENT.sub(" ", _DEGREE.sub(" ", text))  # "cm^2" must not leave a 2 behind
    if unit and unit.strip():
        text = re.sub(rf"(?<![A-Za-z]){re.escape(unit.strip())}(?![A-Za-z])", " ", text)
    text = _FRAC.sub(lambda m: f"{m.group(1).strip()}/{m.group(2).strip()}", text)
    text = _FRAC_DIGITS.sub(r"\1/\2", text)
    return _THOUSANDS.sub("", text)


def _to_fraction(token: str) -> Fraction | None:
    token = "".join(token.split())
    if len(token) > MAX_NUMBER_CHARS:
        return None
    try:
        parts = [Fraction(part) for part in token.split("/")]
        return parts[0] / parts[1] if len(parts) == 2 else parts[0]
    except (ValueError, ZeroDivisionError):
        return None


def _format_number(number: Fraction, kind: str, precision: int | None) -> str | None:
    if kind == "integer":
        return str(int(number))  # truncation, as MathVista's str(int(float(x)))
    try:
        value = float(number)
    except OverflowError:
        return None
    if not math.isfinite(value):
        return None
    if precision is None:
        return str(value)
    return f"{round(value, precision) + 0.0:.{precision}f}"  # + 0.0 turns -0.0 into 0.0


def _floats_equal(a: float, b: float, precision: Any) -> bool:
    return a == b if precision is not None else abs(a - b) < FLOAT_TOLERANCE


# --- multiple choice ---------------------------------------------------------------------------


def _normalize_choice(text: str, problem: dict[str, Any], strict: bool = False) -> str | None:
    choices = [str(c) for c in problem.get("choices") or []]
    text = _strip_markup(text)
    if not text:
        return None
    if not choices or _letters_only(choices):
        return _choice_by_letter(text, choices or list(LETTERS), loose=True)
    matchers = (_exact_choice, _choice_by_letter, _casefold_choice, _numeric_choice)
    for matcher in matchers:
        found = matcher(text, choices)
        if found is not None:
            return found
    return None if strict else _nearest_choice(text, choices)


def _letters_only(choices: list[str]) -> bool:
    """MATH-Vision style: the options are in the image and `choices` is just A, B, C, ..."""
    return len(choices) <= len(LETTERS) and all(
        c.strip().upper() == LETTERS[i] for i, c in enumerate(choices)
    )


def _choice_by_letter(text: str, choices: list[str], loose: bool = False) -> str | None:
    for form in _LETTER_FORMS:
        found = [m.group(1).upper() for m in form.finditer(text)]
        if found and LETTERS.index(found[-1]) < len(choices):
            return choices[LETTERS.index(found[-1])]
    if loose:  # as VLMEvalKit's can_infer_option: exactly one option letter mentioned
        found = {m.group(1) for m in _STANDALONE_LETTER.finditer(text)}
        found = {letter for letter in found if LETTERS.index(letter) < len(choices)}
        return choices[LETTERS.index(found.pop())] if len(found) == 1 else None
    return None


def _canon(choice: str) -> str:
    return _strip_markup(choice) or choice.strip()


def _exact_choice(text: str, choices: list[str]) -> str | None:
    return next((c for c in choices if _canon(c) == text), None)


def _casefold_choice(text: str, choices: list[str]) -> str | None:
    return next((c for c in choices if _canon(c).casefold() == text.casefold()), None)


def _numeric_choice(text: str, choices: list[str]) -> str | None:
    value = parse_number(text)
    if value is None:
        return None
    hits = [c for c in choices if parse_number(c) == value]
    return hits[0] if len(hits) == 1 else None


def _nearest_choice(text: str, choices: list[str]) -> str:
    target = text.casefold()[:MAX_DISTANCE_CHARS]
    distances = [edit_distance(target, _canon(c).casefold()[:MAX_DISTANCE_CHARS]) for c in choices]
    return choices[distances.index(min(distances))]  # ties go to the first, as MathVista's argmin


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions each cost 1."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            cost = previous[j - 1] + (char_a != char_b)
            current.append(min(previous[j] + 1, current[j - 1] + 1, cost))
        previous = current
    return previous[-1]
