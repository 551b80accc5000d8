"""MATH-Vision (`data/test.jsonl` beside `images/`, or the HF parquet with `decoded_image`).

`options` is [] for free-form questions, ["A".."E"] when the options are drawn in the image, or
the option texts; the answer is a letter or the free-form answer. `<imageN>` placeholders are
dropped from the question; the family is the record's `subject`.
"""

from __future__ import annotations

import re
from typing import Any

from casseat_edge.loaders.common import (
    IMAGE_ONLY_QUESTION,
    Source,
    choice_row,
    free_row,
    get_field,
    image,
)

SIGNATURE = ("id", "question", "options", "answer")
_IMAGE_PLACEHOLDER = re.compile(r"<image\d+>")
_PLACEHOLDER_BEFORE_PUNCT = re.compile(r"[ \t]*<image\d+>(?=[.,;:?!])")


def convert_record(record: dict[str, Any], src: Source, where: str) -> dict[str, Any]:
    """MATH-Vision: options [] (free form), ["A".."E"] (drawn in the image) or option texts."""
    pid = str(get_field(record, "id", where))
    answer = str(get_field(record, "answer", where)).strip()
    options = [str(option) for option in record.get("options") or []]
    row = choice_row(options, answer, where) if options else free_row(answer)
    subject = record.get("subject")
    metadata = {"source": "MATH-Vision", "split": src.split, "subject": subject}
    return row | {
        "pid": pid,
        "question": _strip_placeholders(str(record.get("question") or "")),
        "image": image(src, pid, where, record.get("image"), record.get("decoded_image")),
        "metadata": metadata | {"level": record.get("level"), "family": subject},
    }


def _strip_placeholders(question: str) -> str:
    text = _IMAGE_PLACEHOLDER.sub(" ", _PLACEHOLDER_BEFORE_PUNCT.sub("", question))
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line) or IMAGE_ONLY_QUESTION
