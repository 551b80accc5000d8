"""MathVerse (`testmini.json`, a list, or the HF parquet with an embedded `image`).

`question_type` uses hyphens; multi-choice options are embedded in the question
("Choices:\\nA:40°\\nB:60°"), or drawn in the image (then the choices are bare letters);
"Vision Only" rows have an empty question, taken from the query prompts when they hold one. The
family is `metadata.subfield`.
"""

from __future__ import annotations

import re
from typing import Any

from casseat_edge.loaders.common import (
    IMAGE_ONLY_QUESTION,
    LETTERS,
    Source,
    choice_row,
    free_row,
    get_field,
    image,
)

SIGNATURE = ("sample_index", "problem_version", "question", "answer", "question_type")
_CHOICES_HEADER = re.compile(r"^[ \t]*choices[ \t]*[:：][ \t]*", re.IGNORECASE | re.MULTILINE)
_CHOICE_LINE = re.compile(r"^\s*\(?([A-Z])\s*[).:：]\s*(.*?)\s*$")


def convert_record(record: dict[str, Any], src: Source, where: str) -> dict[str, Any]:
    """MathVerse: question_type uses hyphens; multi-choice options are embedded in the question
    ("Choices:\\nA:40°\\nB:60°"); "Vision Only" rows have an empty question."""
    pid = str(get_field(record, "sample_index", where))
    question_type = str(get_field(record, "question_type", where)).replace("-", "_")
    question = str(record.get("question") or "").strip() or _question_from_query(record)
    answer = str(get_field(record, "answer", where)).strip()
    if question_type == "multi_choice":
        question, choices = _embedded_choices(question)
        row = choice_row(choices or _bare_letters(answer), answer, where)
    else:
        row = free_row(answer) | {"question_type": question_type}
    meta = record.get("metadata") or {}
    metadata = {
        "source": "MathVerse",
        "split": meta.get("split") or src.split,
        "problem_version": record.get("problem_version"),
        "problem_index": record.get("problem_index"),
        "origin": meta.get("source"),
        "subject": meta.get("subject"),
        "subfield": meta.get("subfield"),
        "family": meta.get("subfield"),
    }
    row_image = image(src, pid, where, record.get("image"))
    return row | {"pid": pid, "question": question, "image": row_image, "metadata": metadata}


def _bare_letters(answer: str) -> list[str]:
    """Options drawn in the image: letters A-D, or up to the answer's letter if it is later."""
    letter = answer.strip().strip("().").strip()
    count = LETTERS.index(letter) + 1 if len(letter) == 1 and letter in LETTERS else 0
    return list(LETTERS[: max(4, count)])


def _question_from_query(record: dict[str, Any]) -> str:
    """An empty MathVerse question: the query prompts hold "<instruction>\\nQuestion: <text>"."""
    for field in ("query_wo", "query_cot"):
        query = str(record.get(field) or "")
        if "Question:" in query and query.split("Question:", 1)[1].strip():
            return query.split("Question:", 1)[1].strip()
    return IMAGE_ONLY_QUESTION


def _embedded_choices(question: str) -> tuple[str, list[str]]:
    """Split "stem\\nChoices:\\nA:x\\nB:y" into (stem, [x, y]); (question, []) if not there."""
    header = _CHOICES_HEADER.search(question)
    if header is None:
        return question, []
    choices = []
    for line in question[header.end() :].splitlines():
        if not line.strip():
            continue
        match = _CHOICE_LINE.match(line)
        if match is None or match.group(1) != LETTERS[len(choices)]:
            return question, []
        choices.append(match.group(2))
    if len(choices) < 2:
        return question, []
    return question[: header.start()].strip() or IMAGE_ONLY_QUESTION, choices
