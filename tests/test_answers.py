"""Tests for `casseat_edge.answers`: candidate priority, per-type normalization, `is_correct`, and
hypothesis properties (round-trips for integers, floats and options; never raising on any text)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casseat_edge.answers import (
    FINAL_ANSWER_PREFIX,
    answer_kind,
    candidate_text,
    edit_distance,
    extract,
    final_answer_line,
    is_correct,
    last_boxed,
    normalize,
    parse_number,
)


def integer(answer: str = "12", unit: str | None = None) -> dict:
    return {"pid": "i", "answer": answer, "answer_type": "integer", "choices": None,
            "precision": None, "unit": unit, "question_type": "free_form",
            "metadata": {"family": "count"}}  # fmt: skip


def floating(answer: str = "3.1", precision: int | None = 2) -> dict:
    return {**integer(answer), "answer_type": "float", "precision": precision}


def text(answer: str = "Yes") -> dict:
    return {**integer(answer), "answer_type": "text"}


def choice(choices: list[str], answer: str, answer_type: str = "text") -> dict:
    return {**integer(answer), "answer_type": answer_type, "choices": choices,
            "question_type": "multi_choice"}  # fmt: skip


ANGLES = choice(["35°", "145°", "55°", "90°"], "145°")
LETTERS_ONLY = choice(["A", "B", "C", "D", "E"], "C", answer_type="multi_choice")


# --- final-answer line ---------------------------------------------------------------------------


def test_final_answer_line_format():
    assert FINAL_ANSWER_PREFIX == "Final answer:"
    assert final_answer_line("12") == "Final answer: 12"
    assert final_answer_line(" 3\n cm ") == "Final answer: 3 cm"


# --- candidate priority --------------------------------------------------------------------------


def test_final_answer_line_beats_earlier_answer_phrase_and_boxes():
    response = "The answer is 5. Checking: \\boxed{6}\nFinal answer: 12"
    assert candidate_text(response) == "12"
    assert extract(response, integer()) == "12"


def test_last_final_answer_line_wins():
    assert extract("Final answer: 3\nwait, recount.\nFinal answer: 4", integer()) == "4"


@pytest.mark.parametrize(
    "response",
    [
        "**Final answer:** 12",
        "**Final answer**: 12.",
        "final ANSWER: **12**",
        "Reasoning...\n### Final answer: $12$",
        "Final answer:\n12",
        "Final answer: \\boxed{12}",
    ],
)
def test_final_answer_line_tolerates_markdown(response):
    assert extract(response, integer()) == "12"


def test_last_boxed_with_nested_braces():
    response = "First \\boxed{1}, then \\boxed{\\frac{24}{2}} is it."
    assert last_boxed(response) == "\\frac{24}{2}"
    assert extract(response, integer()) == "12"


def test_fbox_and_truncated_box():
    assert extract("so \\fbox{7}", integer()) == "7"
    assert last_boxed("\\boxed{3} and then \\boxed{4") == "3"  # the unclosed box is skipped


def test_boxed_beats_answer_phrase():
    assert extract("The answer is 5.\nActually \\boxed{6}", integer()) == "6"


def test_answer_tag():
    assert extract("<think>maybe 3</think>\n<answer>7</answer>", integer()) == "7"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Counting again.\nThe answer is 9. Done, with 4 left over.", "9"),
        ("The final answer is 9", "9"),
        ("So the correct answer is: 9 apples\nThanks", "9"),
        ("I guess the answer should be 9.", "9"),
        ("Step 1: add.\nAnswer: 9", "9"),
        ("The answer is 3. Oh no, the answer is 9.", "9"),
        ("The answer is:\n9", "9"),
    ],
)
def test_answer_phrasings_take_the_last_until_sentence_end(response, expected):
    assert extract(response, integer()) == expected


def test_short_one_line_response_is_the_answer():
    assert extract("12", integer()) == "12"
    assert extract("  12 cm  ", integer()) == "12"


def test_long_response_without_markers_is_none():
    assert extract("I count the cubes.\nThere are 12 of them in total.", integer()) is None
    assert extract("x" * 200 + " 12", integer()) is None


@pytest.mark.parametrize("response", ["", "   ", "\n\n", "Final answer:", "\\boxed{}"])
def test_nothing_usable_is_none(response):
    assert extract(response, integer()) is None


def test_none_when_candidate_has_no_number():
    assert extract("The answer is unknown.", integer()) is None
    assert extract("Final answer: cannot tell", floating()) is None


# --- integers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("1,234", "1234"),
        ("-1,234,567", "-1234567"),
        ("1{,}234", "1234"),
        ("12 cm", "12"),
        ("12 cm^2", "12"),
        ("12 m²", "12"),
        ("$12$ cm", "12"),
        ("30°", "30"),
        ("30^\\circ", "30"),
        ("$30^{\\circ}$", "30"),
        ("45%", "45"),
        ("45\\%", "45"),
        ("$1,234.56", "1234"),
        ("12.0", "12"),
        ("12.7", "12"),  # MathVista's str(int(float(x))) truncates
        ("-12.7", "-12"),
        ("\u22127", "-7"),
        ("x = -7", "-7"),
        ("\\frac{24}{2}", "12"),
        ("\\dfrac{-36}{3}", "-12"),
        ("36/3", "12"),
        ("\\text{12 apples}", "12"),
        ("12 cm + 3 = 15 cm", "15"),
        ("20 - 5", "5"),  # a binary minus is not a sign
        ("it is -5", "-5"),
        ("three", "3"),
        ("1.2e3", "1200"),
    ],
)
def test_integer_normalization(candidate, expected):
    assert normalize(candidate, integer(unit="cm")) == expected


def test_problem_unit_is_stripped():
    assert normalize("7 px2", integer(unit="px2")) == "7"


@pytest.mark.parametrize("candidate", ["", "none", "3/0", "9" * 500])
def test_integer_unusable_is_none(candidate):
    assert normalize(candidate, integer()) is None


# --- floats --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "precision", "expected"),
    [
        ("3.14159", 0, "3"),
        ("3.14159", 1, "3.1"),
        ("3.14159", 2, "3.14"),
        ("3.1", 2, "3.10"),
        ("3", 2, "3.00"),
        ("-0.001", 2, "0.00"),
        ("\\frac{1}{4}", 2, "0.25"),
        ("3/4 m", 1, "0.8"),
        ("1,234.5", 1, "1234.5"),
        ("2.5", None, "2.5"),
        ("7", None, "7.0"),
    ],
)
def test_float_rounding(candidate, precision, expected):
    assert normalize(candidate, floating(precision=precision)) == expected


def test_float_is_correct_uses_precision():
    assert is_correct("3.104", floating("3.1", precision=2))
    assert not is_correct("3.11", floating("3.1", precision=2))
    assert is_correct("3.1000000000001", floating("3.1", precision=None))
    assert not is_correct("3.1001", floating("3.1", precision=None))


# --- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ('"Yes"', "Yes"),
        ("  yes. ", "yes"),
        ("**Yes**", "Yes"),
        ("‘Paris’", "Paris"),
        ("New   York", "New York"),
        ("3:45", "3:45"),
        ("$\\text{blue}$", "blue"),
    ],
)
def test_text_normalization(candidate, expected):
    assert normalize(candidate, text()) == expected


def test_text_time_survives_extraction():
    assert extract("The clock shows the answer is 3:45.", text("3:45")) == "3:45"


def test_text_is_case_insensitive():
    assert is_correct("YES", text("yes"))
    assert is_correct(extract('The answer is "yes".', text("Yes")), text("Yes"))
    assert is_correct('"yes".', text("Yes"))
    assert not is_correct("no", text("yes"))


# --- multiple choice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate",
    ["B", "(B)", "B.", "B)", "B: 145°", "(B) 145°", "b", "(b)", "option B", "Option (B)", "145 °"],
)
def test_letter_forms_map_to_option_text(candidate):
    assert normalize(candidate, ANGLES) == "145°"
    assert is_correct(candidate, ANGLES)


def test_letter_beats_the_text_after_it():
    assert normalize("(D) the right angle", ANGLES) == "90°"
    shapes = choice(["triangle", "square", "pentagon"], "C")
    assert normalize("(C) five-sided", shapes) == "pentagon"


def test_choice_text_match_ignores_case_and_whitespace():
    problem = choice(["The Red  car", "the blue car"], "the blue car")
    assert normalize("the red car", problem) == "The Red  car"
    assert normalize("THE BLUE CAR", problem) == "the blue car"


def test_choice_numeric_match():
    assert normalize("145 degrees", ANGLES) == "145°"
    assert normalize("55", ANGLES) == "55°"


def test_nearest_choice_by_edit_distance():
    problem = choice(["triangle", "square", "pentagon"], "square")
    assert normalize("squre", problem) == "square"
    assert normalize("pentagonal shape", problem) == "pentagon"
    assert extract("The answer is a sqaure.", problem) == "square"


def test_exact_option_text_beats_letter_reading():
    problem = choice(["c", "a", "b"], "a")
    assert normalize("a", problem) == "a"


def test_extract_multi_choice_from_responses():
    assert extract("Angle ABC is supplementary. The answer is (B) 145°.", ANGLES) == "145°"
    assert extract("Final answer: C", ANGLES) == "55°"
    assert extract("\\boxed{\\text{(D)}}", ANGLES) == "90°"
    assert extract("Comparing both.\nThe correct option is (A).", ANGLES) == "35°"


def test_math_vision_letter_only_choices_return_the_letter():
    assert extract("so \\boxed{C}", LETTERS_ONLY) == "C"
    assert extract("The answer is (D) 12", LETTERS_ONLY) == "D"
    assert extract("The answer is E because it fits", LETTERS_ONLY) == "E"
    assert extract("Final answer: 12", LETTERS_ONLY) is None
    assert extract("Final answer: A or B", LETTERS_ONLY) is None  # two letters: ambiguous
    assert is_correct("c", LETTERS_ONLY)
    assert not is_correct("B", LETTERS_ONLY)


def test_we_math_letter_answer_against_option_texts():
    problem = choice(["2 cm", "4 cm", "6 cm"], "B")
    assert is_correct("4 cm", problem)
    assert is_correct("(B)", problem)
    assert is_correct("4", problem)
    assert not is_correct("6 cm", problem)


def test_multi_choice_without_choices_uses_letters():
    problem = {**integer("D"), "answer_type": "multi_choice"}
    assert answer_kind(problem) == "multi_choice"
    assert extract("\\boxed{D}", problem) == "D"


def test_answer_kind():
    assert answer_kind(ANGLES) == "multi_choice"
    assert answer_kind(integer()) == "integer"
    assert answer_kind(floating()) == "float"
    assert answer_kind({**integer(), "answer_type": "list"}) == "text"


# --- is_correct ----------------------------------------------------------------------------------


def test_is_correct_none_and_empty():
    assert not is_correct(None, integer())
    assert not is_correct("", integer())
    assert not is_correct("no number", integer())
    assert not is_correct(None, ANGLES)


@pytest.mark.parametrize(
    ("prediction", "problem"),
    [
        ("12", integer("12")),
        ("12 cm", integer("12")),
        ("12.0", integer("12")),
        ("1,234", integer("1234")),
        ("0.25", floating("\\frac{1}{4}", precision=2)),
        ("145°", ANGLES),
        ("yes", text("Yes")),
    ],
)
def test_is_correct_is_symmetric(prediction, problem):
    assert is_correct(prediction, problem)
    swapped = {**problem, "answer": prediction}
    assert is_correct(problem["answer"], swapped)


def test_is_correct_rejects_wrong_values():
    assert not is_correct("13", integer("12"))
    assert not is_correct("-12", integer("12"))
    assert not is_correct("35°", ANGLES)


def test_is_correct_accepts_numeric_json_answers():
    assert is_correct("12", {**integer(), "answer": 12})


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("flaw", "lawn") == 2


def test_parse_number_is_exact():
    assert parse_number("\\frac{1}{3}") * 3 == 1
    assert parse_number("no digits") is None


# --- properties ----------------------------------------------------------------------------------

PHRASINGS = (
    "{}",
    "Final answer: {}",
    "**Final answer:** {}.",
    "Let me think.\nThe answer is {}.",
    "Work...\nThe final answer is ${}$",
    "Thus \\boxed{{{}}}",
    "$\\boxed{{{} \\text{{ cm}}}}$",
    "Answer: {} cm",
    "<answer>{}</answer>",
    "The answer is 0.\nFinal answer: {}",
)


@given(n=st.integers(min_value=-(10**30), max_value=10**30), template=st.sampled_from(PHRASINGS),
       thousands=st.booleans(), unicode_minus=st.booleans())  # fmt: skip
def test_integer_round_trips_through_any_phrasing(n, template, thousands, unicode_minus):
    written = f"{n:,}" if thousands else str(n)
    if unicode_minus:
        written = written.replace("-", "\u2212")
    problem = integer(str(n))
    response = template.format(written)
    assert extract(response, problem) == str(n)
    assert is_correct(extract(response, problem), problem)
    assert is_correct(candidate_text(response), problem)
    assert not is_correct(str(n + 1), problem)


@given(x=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), p=st.integers(0, 4),
       template=st.sampled_from(PHRASINGS))  # fmt: skip
def test_float_round_trips_at_its_precision(x, p, template):
    written = f"{x:.{p}f}"
    expected = f"{float(written) + 0.0:.{p}f}"  # "-0.00" reads as "0.00"
    problem = floating(written, precision=p)
    response = template.format(written)
    assert extract(response, problem) == expected
    assert is_correct(candidate_text(response), problem)
    assert not is_correct(f"{float(written) + 10**-p:.{p}f}", problem)


def _canonical(option: str) -> str:
    return " ".join(option.split()).casefold()


OPTION = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzXYZ0123456789 °%-", min_size=2, max_size=16)
    .map(str.strip)
    .filter(lambda s: len(s) >= 2 and not (s[0].isalpha() and (len(s) == 1 or s[1] == " ")))
    .filter(lambda s: "option" not in s and "choice" not in s)
)


@given(choices=st.lists(OPTION, min_size=2, max_size=6, unique_by=_canonical), data=st.data())
def test_letter_or_option_text_extracts_that_option(choices, data):
    i = data.draw(st.integers(0, len(choices) - 1))
    letter = "ABCDEF"[i]
    forms = [letter, f"({letter})", f"{letter}.", f"({letter}) {choices[i]}", choices[i]]
    form = data.draw(st.sampled_from(forms))
    template = data.draw(st.sampled_from(["{}", "Final answer: {}", "\\boxed{{{}}}"]))
    problem = choice(choices, choices[i])
    assert extract(template.format(form), problem) == choices[i]
    assert is_correct(letter, problem)


PROBLEMS = (integer(), floating(), floating(precision=None), text(), ANGLES, LETTERS_ONLY)


@settings(max_examples=300)
@given(response=st.text(), problem=st.sampled_from(PROBLEMS))
def test_extract_never_raises(response, problem):
    result = extract(response, problem)
    assert result is None or isinstance(result, str)
    assert isinstance(is_correct(response, problem), bool)


@given(response=st.text(alphabet="0123456789-+.,/eE ${}\\fracboxed^°%", max_size=60),
       problem=st.sampled_from(PROBLEMS))  # fmt: skip
def test_extract_never_raises_on_number_soup(response, problem):
    result = extract(response, problem)
    assert result is None or isinstance(result, str)
