"""We-Math testmini (`testmini.json`, a list): one `option` string per record, answer a letter.

An `ID` repeats across `key`s (one question split into steps), so the pid is `ID@key`; the family
is the record's `knowledge concept`.
"""

from __future__ import annotations

import re
from typing import Any

from casseat_edge.errors import DataError
from casseat_edge.loaders.common import LETTERS, Source, choice_row, get_field, image

SIGNATURE = ("ID", "option", "answer", "image_path", "key")


def convert_record(record: dict[str, Any], src: Source, where: str) -> dict[str, Any]:
    """We-Math testmini: one `option` string "A. x;B. y; C. z", answer a letter; ID repeats
    across `key`s (one question split into steps), so the pid is ID@key."""
    pid = f"{get_field(record, 'ID', where)}@{get_field(record, 'key', where)}"
    choices = _split_lettered(str(get_field(record, "option", where)), where)
    concept = record.get("knowledge concept")
    metadata = {
        "source": "We-Math",
        "split": record.get("split") or src.split,
        "key": record["key"],
        "knowledge_concept": concept,
        "question_number": record.get("question number"),
        "family": concept,
    }
    return choice_row(choices, str(get_field(record, "answer", where)), where) | {
        "pid": pid,
        "question": record.get("question"),
        "image": image(src, pid, where, record.get("image_path")),
        "metadata": metadata,
    }


def _split_lettered(text: str, where: str) -> list[str]:
    """We-Math's "A. 300, 400;B. 400, 300; C. 3000" -> option texts. Markers are found in letter
    order, after a ';' when possible, else after a space (the file has "A. 6cm B. 1cm ;C. 4cm")."""
    spans: list[tuple[int, int]] = []
    for letter in LETTERS:
        span = _find_marker(text, letter, spans[-1][1] if spans else 0)
        if span is None:
            break
        spans.append(span)
    if len(spans) < 2 or spans[0][0] != 0:
        raise DataError(f"{where}: option: cannot split {text!r} into options 'A. text; B. text'")
    ends = [start for start, _ in spans[1:]] + [len(text)]
    return [text[body:end].strip(" ;\t\n") for (_, body), end in zip(spans, ends, strict=True)]


def _find_marker(text: str, letter: str, pos: int) -> tuple[int, int] | None:
    for pattern in (rf"(?:^|;)\s*{letter}\s*\.\s*", rf"(?:^|\s){letter}\.\s+"):
        match = re.compile(pattern).search(text, pos)
        if match:
            return match.start(), match.end()
    return None
