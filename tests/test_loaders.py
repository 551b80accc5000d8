"""Tests for `casseat_edge.loaders`: each official layout (MathVista, MATH-Vision, We-Math,
MathVerse; JSON, JSONL, parquet) loads into valid problems, and every bad input fails with one
`location: field: problem` line (or is skipped and recorded under skip_invalid).

Fixtures are tiny copies of the published schemas written into tmp_path; images are 4x4 PIL images.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from casseat_edge.errors import DataError
from casseat_edge.loaders import (
    FORMATS,
    IMAGE_ONLY_QUESTION,
    convert_problems,
    detect_format,
    load_problems,
)

# ---- fixture builders -------------------------------------------------------------------------


def image_bytes(kind: str = "PNG", color: tuple[int, int, int] = (200, 20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format=kind)
    return buffer.getvalue()


def write_image(path: Path, kind: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(kind))
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def hf_image(data: bytes | None, name: str) -> dict[str, Any]:
    """The Hugging Face `Image` feature as stored in parquet."""
    return {"bytes": data, "path": name}


def mathvista_record(pid: str, **overrides: Any) -> dict[str, Any]:
    record = {
        "pid": pid,
        "question": f"Question {pid}: what is the value?",
        "image": f"images/{pid}.jpg",
        "choices": None,
        "unit": None,
        "precision": None,
        "answer": "1000",
        "question_type": "free_form",
        "answer_type": "integer",
        "metadata": {
            "split": "testmini",
            "language": "english",
            "img_width": 4,
            "img_height": 4,
            "source": "FigureQA",
            "category": "math-targeted-vqa",
            "task": "figure question answering",
            "context": "bar chart",
            "grade": "daily life",
            "skills": ["statistical reasoning"],
        },
    }
    return record | overrides


def mathvista_records() -> dict[str, dict[str, Any]]:
    return {
        "1": mathvista_record(
            "1",
            choices=["30°", "60°", "90°"],
            answer="60°",
            question_type="multi_choice",
            answer_type="multi_choice",
        ),
        "2": mathvista_record("2", unit="g"),
        "3": mathvista_record("3", answer="1.2", answer_type="float", precision=1),
        "4": mathvista_record("4", answer="[1, 2]", answer_type="list"),
    }


@pytest.fixture
def mathvista_json(tmp_path: Path) -> Path:
    for pid in "1234":
        write_image(tmp_path / "MathVista" / "images" / f"{pid}.jpg", "JPEG")
    return write_json(tmp_path / "MathVista" / "testmini.json", mathvista_records())


@pytest.fixture
def mathvista_parquet(tmp_path: Path) -> Path:
    rows = []
    for pid, record in mathvista_records().items():
        if record["answer_type"] == "list":
            continue
        precision = None if record["precision"] is None else float(record["precision"])
        rows.append(
            record
            | {
                "precision": precision,
                "decoded_image": hf_image(image_bytes("JPEG"), f"{pid}.jpg"),
                "query": f"Hint: answer.\nQuestion: {record['question']}",
            }
        )
    return write_parquet(tmp_path / "MathVista" / "data" / "testmini-00000-of-00001.parquet", rows)


MATHVISION_ROWS = [
    {
        "id": "5",
        "question": "Which number do you have to write in the last daisy?\n<image1>",
        "options": [],
        "answer": "61",
    },
    {
        "id": "6",
        "question": "In which picture can we see the kittens of Misty?\n<image1>",
        "options": ["A", "B", "C", "D", "E"],
        "answer": "D",
    },
    {
        "id": "39",
        "question": "Ingrid builds an object:\n<image1>\nWhich colour is the cube?",
        "options": ["red", "blue", "green", "Yellow", "This cannot be worked out."],
        "answer": "A",
    },
    {
        "id": "33",
        "question": "When the ant <image1> walks from home <image2>, how far is it?",
        "options": [],
        "answer": "1.25",
    },
    {"id": "59", "question": "Which side is opposite?\n<image4>", "options": [], "answer": "C"},
]


def mathvision_row(row: dict[str, Any]) -> dict[str, Any]:
    extra = {
        "solution": None,
        "level": 2,
        "subject": "arithmetic",
        "image": f"images/{row['id']}.jpg",
    }
    return row | extra


@pytest.fixture
def mathvision_jsonl(tmp_path: Path) -> Path:
    """The GitHub layout: `data/testmini.jsonl` with `images/` beside `data/`, not inside it."""
    for row in MATHVISION_ROWS:
        write_image(tmp_path / "MATH-V" / "images" / f"{row['id']}.jpg", "JPEG")
    rows = [mathvision_row(row) for row in MATHVISION_ROWS]
    return write_jsonl(tmp_path / "MATH-V" / "data" / "testmini.jsonl", rows)


WEMATH_OPTION = "A. 300, 400;B. 400, 300;C. 3000, 4000;D. 4000, 3000; E. No correct answer"
WEMATH_ROWS = [
    ("2steps_1", "2steps_1", WEMATH_OPTION, "C"),
    ("2steps_1", "2steps_multi", "A. F;    B. D;    C. B;    D. I; E. No correct answer", "D"),
    ("3steps_47", "3steps_1", "A. 6cm, 2cm B. 1cm, 3cm ;C. 1cm, 4cm; D. No correct answer", "A"),
    ("2steps_11", "2steps_1", "A. A; B. B; C. C; D. E; E. No correct answer", "D"),
]  # fmt: skip


def wemath_record(number: int, ident: str, key: str, option: str, answer: str) -> dict[str, Any]:
    return {
        "ID": ident,
        "split": "testmini",
        "knowledge concept": "Conversion Rates and Calculations Between Length Units",
        "question": f"According to the diagram, question {number} is ( )",
        "option": option,
        "answer": answer,
        "image_path": f"2steps/image/{number}-1.png",
        "key": key,
        "question number": number,
        "knowledge concept description": "1 km = 1000 m.",
    }


@pytest.fixture
def wemath_json(tmp_path: Path) -> Path:
    records = [wemath_record(n, *row) for n, row in enumerate(WEMATH_ROWS, 1)]
    for record in records:
        write_image(tmp_path / "We-Math" / record["image_path"])
    return write_json(tmp_path / "We-Math" / "testmini.json", records)


def mathverse_record(index: str, version: str, question: str, answer: str, **extra: Any):
    choice = "Choices:" in question or extra.pop("multi", False)
    prefix = "Please directly answer the question and provide the correct option letter."
    record = {
        "sample_index": index,
        "problem_index": "2",
        "problem_version": version,
        "question": question,
        "image": f"images_version_1-4/image_{index}.png",
        "answer": answer,
        "question_type": "multi-choice" if choice else "free-form",
        "metadata": {
            "split": "testmini",
            "source": "GeoQA",
            "subject": "Plane Geometry",
            "subfield": "Angle",
        },
        "query_wo": f"{prefix}\nQuestion: {question}" if question else prefix,
        "query_cot": f"{prefix}\nQuestion: {question}" if question else prefix,
        "question_for_eval": question,
    }
    return record | extra


def mathverse_records() -> list[dict[str, Any]]:
    vision_only = "According to the question shown in the image, please answer with the letter."
    return [
        mathverse_record("3421", "Text Dominant", "Find L, rounded down to the nearest cm.", "14"),
        mathverse_record(
            "9",
            "Vision Dominant",
            "AB parallel CD, then angle 2 is equal to ()\nChoices:\nA:50°\nB:60°\nC:65°\nD:90°",
            "C",
        ),
        mathverse_record(
            "10", "Text Lite", "Find angle CED.\nChoices:\n(A) 40°\n(B) 60°\n(C) 120°", "B"
        ),
        mathverse_record(
            "3425",
            "Vision Only",
            "",
            "D",
            multi=True,
            query_wo=vision_only,
            query_cot=vision_only,
        ),
    ]


@pytest.fixture
def mathverse_json(tmp_path: Path) -> Path:
    records = mathverse_records()
    for record in records:
        write_image(tmp_path / "MathVerse" / record["image"])
    return write_json(tmp_path / "MathVerse" / "testmini.json", records)


@pytest.fixture
def mathverse_parquet(tmp_path: Path) -> Path:
    rows = [
        record | {"image": hf_image(image_bytes("PNG"), f"image_{record['sample_index']}.png")}
        for record in mathverse_records()
    ]
    return write_parquet(tmp_path / "MathVerse" / "data" / "testmini-00000-of-00001.parquet", rows)


def by_pid(problems) -> dict[str, dict[str, Any]]:
    return {row["pid"]: row for row in problems.rows}


# ---- MathVista --------------------------------------------------------------------------------


def test_mathvista_json_rows_keep_option_text_and_types(mathvista_json: Path) -> None:
    problems = load_problems(mathvista_json, skip_invalid=True)
    rows = by_pid(problems)
    assert sorted(rows) == ["1", "2", "3"]
    assert rows["1"]["choices"] == ["30°", "60°", "90°"]
    assert rows["1"]["answer"] == "60°"
    assert rows["1"]["answer_type"] == "multi_choice"
    assert rows["2"]["answer_type"] == "integer" and rows["2"]["unit"] == "g"
    assert rows["3"]["precision"] == 1 and rows["3"]["answer_type"] == "float"
    assert rows["2"]["metadata"]["skills"] == ["statistical reasoning"]
    assert problems.root == mathvista_json.parent
    assert problems.image_path(rows["1"]).is_file()


def test_mathvista_list_answer_type_is_unsupported(mathvista_json: Path) -> None:
    with pytest.raises(
        DataError, match=r"testmini\.json:pid=4: answer_type: unsupported answer_type 'list'"
    ):
        load_problems(mathvista_json)
    skipped = load_problems(mathvista_json, skip_invalid=True).skipped
    assert [(s["pid"], "unsupported answer_type" in s["reason"]) for s in skipped] == [("4", True)]


def test_mathvista_parquet_extracts_images_once_and_ints_precision(mathvista_parquet: Path) -> None:
    problems = load_problems(mathvista_parquet)
    rows = by_pid(problems)
    assert rows["3"]["precision"] == 1 and isinstance(rows["3"]["precision"], int)
    assert re.fullmatch(r"testmini-00000-of-00001_images/1-[0-9a-f]{12}\.jpg", rows["1"]["image"])
    assert problems.root == mathvista_parquet.parent
    extracted = problems.image_path(rows["1"])
    assert extracted.read_bytes() == image_bytes("JPEG")
    assert "query" not in rows["1"]
    before = extracted.stat().st_mtime_ns
    load_problems(mathvista_parquet)
    assert extracted.stat().st_mtime_ns == before  # same bytes: not written again


def test_parquet_image_dir_inside_and_outside_the_file_dir(
    mathvista_parquet: Path, tmp_path: Path
) -> None:
    inside = load_problems(mathvista_parquet, image_dir=mathvista_parquet.parent / "cache")
    assert re.fullmatch(r"cache/1-[0-9a-f]{12}\.jpg", by_pid(inside)["1"]["image"])
    outside = load_problems(mathvista_parquet, image_dir=tmp_path / "elsewhere" / "imgs")
    assert outside.root == tmp_path / "elsewhere"
    assert re.fullmatch(r"imgs/2-[0-9a-f]{12}\.jpg", by_pid(outside)["2"]["image"])
    assert outside.image_path(by_pid(outside)["2"]).is_file()


def test_unknown_answer_type_is_reported(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "1.jpg", "JPEG")
    path = write_json(
        tmp_path / "testmini.json", {"1": mathvista_record("1", answer_type="fraction")}
    )
    with pytest.raises(DataError, match=r"pid=1: answer_type: unknown value 'fraction'"):
        load_problems(path)


def test_missing_image_is_an_error_unless_skipped(mathvista_json: Path) -> None:
    (mathvista_json.parent / "images" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"pid=2: image: file 'images/2.jpg' not found"):
        load_problems(mathvista_json, skip_invalid=False)
    problems = load_problems(mathvista_json, skip_invalid=True)
    assert sorted(by_pid(problems)) == ["1", "3"]
    assert {s["pid"] for s in problems.skipped} == {"2", "4"}
    assert all(s["where"] and s["reason"] for s in problems.skipped)


def test_mathvista_family_is_task_else_category_else_mathvista(tmp_path: Path) -> None:
    base = mathvista_record("1")["metadata"]
    no_task = {k: v for k, v in base.items() if k != "task"}
    neither = {k: v for k, v in no_task.items() if k != "category"}
    records = {
        pid: mathvista_record(pid, image=None, metadata=meta)
        for pid, meta in [("1", base), ("2", no_task), ("3", neither), ("4", None)]
    }
    rows = by_pid(load_problems(write_json(tmp_path / "testmini.json", records)))
    assert rows["1"]["metadata"]["family"] == "figure question answering"
    assert rows["2"]["metadata"]["family"] == "math-targeted-vqa"
    assert rows["3"]["metadata"]["family"] == rows["4"]["metadata"]["family"] == "mathvista"
    assert rows["1"]["metadata"]["task"] == "figure question answering"  # nothing else changes


# ---- MATH-Vision ------------------------------------------------------------------------------


def test_mathvision_jsonl_maps_options_letters_and_answer_types(mathvision_jsonl: Path) -> None:
    problems = load_problems(mathvision_jsonl)
    rows = by_pid(problems)
    assert problems.root == mathvision_jsonl.parent.parent  # images/ sits beside data/
    assert rows["5"]["question"] == "Which number do you have to write in the last daisy?"
    assert rows["5"]["question_type"] == "free_form" and rows["5"]["answer_type"] == "integer"
    assert rows["5"]["choices"] is None
    assert rows["6"]["choices"] == ["A", "B", "C", "D", "E"] and rows["6"]["answer"] == "D"
    assert rows["39"]["answer"] == "red" and rows["39"]["answer_type"] == "multi_choice"
    assert rows["33"]["answer_type"] == "float" and rows["33"]["precision"] == 2
    assert rows["33"]["question"] == "When the ant walks from home, how far is it?"
    assert rows["39"]["question"] == "Ingrid builds an object:\nWhich colour is the cube?"
    assert rows["59"]["answer_type"] == "text" and rows["59"]["answer"] == "C"
    assert all("<image" not in row["question"] for row in problems.rows)
    meta = rows["5"]["metadata"]
    assert meta == {
        "source": "MATH-Vision",
        "split": "testmini",
        "subject": "arithmetic",
        "level": 2,
        "family": "arithmetic",
    }


def test_mathvision_parquet_uses_decoded_image(tmp_path: Path) -> None:
    rows = [
        mathvision_row(row) | {"decoded_image": hf_image(image_bytes("PNG"), f"{row['id']}.png")}
        for row in MATHVISION_ROWS[:3]
    ]
    path = write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    problems = load_problems(path)
    assert re.fullmatch(
        r"test-00000-of-00001_images/5-[0-9a-f]{12}\.png", by_pid(problems)["5"]["image"]
    )
    assert by_pid(problems)["6"]["metadata"]["split"] == "test"
    assert problems.image_path(by_pid(problems)["6"]).read_bytes() == image_bytes("PNG")


def test_mathvision_answer_letter_out_of_range(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "1.jpg", "JPEG")
    row = mathvision_row(
        {"id": "1", "question": "Q <image1>", "options": ["1", "2"], "answer": "E"}
    )
    path = write_jsonl(tmp_path / "test.jsonl", [row])
    with pytest.raises(
        DataError, match=r"test\.jsonl:1: answer: 'E' is neither an option letter A-B"
    ):
        load_problems(path)


def test_malformed_jsonl_line_names_file_and_line(mathvision_jsonl: Path) -> None:
    lines = mathvision_jsonl.read_text().splitlines()
    lines.insert(1, '{"id": "7", "question": ')
    mathvision_jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{mathvision_jsonl}:2: malformed JSON"):
        load_problems(mathvision_jsonl)
    problems = load_problems(mathvision_jsonl, skip_invalid=True)
    assert len(problems.rows) == len(MATHVISION_ROWS)
    assert [s["where"] for s in problems.skipped] == [f"{mathvision_jsonl}:2"]


def test_malformed_json_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "testmini.json"
    path.write_text('[\n  {"ID": "2steps_1",\n   "option": }\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        load_problems(path, skip_invalid=True)


def test_non_object_list_item_is_skippable(wemath_json: Path) -> None:
    records = json.loads(wemath_json.read_text()) + ["not a record"]
    write_json(wemath_json, records)
    with pytest.raises(DataError, match=r"testmini\.json:#4: expected a JSON object, found str"):
        load_problems(wemath_json)
    problems = load_problems(wemath_json, skip_invalid=True)
    assert len(problems.rows) == 4 and problems.skipped[0]["where"].endswith(":#4")


# ---- We-Math ----------------------------------------------------------------------------------


def test_wemath_option_strings_with_irregular_separators(wemath_json: Path) -> None:
    rows = by_pid(load_problems(wemath_json))
    first = rows["2steps_1@2steps_1"]
    assert first["choices"] == [
        "300, 400",
        "400, 300",
        "3000, 4000",
        "4000, 3000",
        "No correct answer",
    ]
    assert first["answer"] == "3000, 4000" and first["question_type"] == "multi_choice"
    assert rows["2steps_1@2steps_multi"]["choices"] == ["F", "D", "B", "I", "No correct answer"]
    assert rows["2steps_1@2steps_multi"]["answer"] == "I"
    missing_semicolon = rows["3steps_47@3steps_1"]
    assert missing_semicolon["choices"] == ["6cm, 2cm", "1cm, 3cm", "1cm, 4cm", "No correct answer"]
    assert missing_semicolon["answer"] == "6cm, 2cm"
    assert rows["2steps_11@2steps_1"]["answer"] == "E"  # the letter D picks the text "E"
    meta = first["metadata"]
    assert meta["source"] == "We-Math" and meta["key"] == "2steps_1"
    assert meta["question_number"] == 1
    assert (
        meta["family"]
        == meta["knowledge_concept"]
        == "Conversion Rates and Calculations Between Length Units"
    )


def test_wemath_unsplittable_option_is_an_error(wemath_json: Path) -> None:
    records = json.loads(wemath_json.read_text())
    records[1]["option"] = "300 or 400"
    write_json(wemath_json, records)
    with pytest.raises(DataError, match=r":#1: option: cannot split '300 or 400'"):
        load_problems(wemath_json)


# ---- MathVerse --------------------------------------------------------------------------------


def check_mathverse_rows(rows: dict[str, dict[str, Any]]) -> None:
    assert rows["3421"]["question_type"] == "free_form"
    assert rows["3421"]["answer"] == "14" and rows["3421"]["answer_type"] == "integer"
    assert rows["9"]["question_type"] == "multi_choice"
    assert rows["9"]["choices"] == ["50°", "60°", "65°", "90°"] and rows["9"]["answer"] == "65°"
    assert rows["9"]["question"] == "AB parallel CD, then angle 2 is equal to ()"
    assert rows["10"]["choices"] == ["40°", "60°", "120°"] and rows["10"]["answer"] == "60°"
    assert rows["3425"]["question"] == IMAGE_ONLY_QUESTION
    assert rows["3425"]["choices"] == ["A", "B", "C", "D"] and rows["3425"]["answer"] == "D"
    meta = rows["9"]["metadata"]
    assert meta["source"] == "MathVerse" and meta["problem_version"] == "Vision Dominant"
    assert meta["subfield"] == meta["family"] == "Angle" and meta["subject"] == "Plane Geometry"


def test_mathverse_json_hyphenated_types_and_embedded_choices(mathverse_json: Path) -> None:
    rows = by_pid(load_problems(mathverse_json))
    check_mathverse_rows(rows)
    assert rows["9"]["image"] == "images_version_1-4/image_9.png"


def test_mathverse_parquet_image_struct(mathverse_parquet: Path) -> None:
    problems = load_problems(mathverse_parquet)
    check_mathverse_rows(by_pid(problems))
    assert re.fullmatch(
        r"testmini-00000-of-00001_images/9-[0-9a-f]{12}\.png", by_pid(problems)["9"]["image"]
    )
    assert problems.image_path(by_pid(problems)["9"]).is_file()


def test_mathverse_text_only_file_has_no_images(tmp_path: Path) -> None:
    record = mathverse_record("1", "Text Only", "A can is 13 cm high. Find L.", "14", image="")
    path = write_json(tmp_path / "testmini_text_only.json", [record])
    row = load_problems(path).rows[0]
    assert row["image"] is None and row["question_type"] == "free_form"


def test_vision_only_question_comes_from_the_query(tmp_path: Path) -> None:
    record = mathverse_record("2", "Vision Only", "", "14", query_wo="Answer.\nQuestion: Find L.")
    write_image(tmp_path / record["image"])
    path = write_json(tmp_path / "testmini.json", [record])
    assert load_problems(path).rows[0]["question"] == "Find L."


# ---- detection and explicit formats ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("mathvista_json", "mathvista"),
        ("mathvista_parquet", "mathvista"),
        ("mathvision_jsonl", "mathvision"),
        ("wemath_json", "wemath"),
        ("mathverse_json", "mathverse"),
        ("mathverse_parquet", "mathverse"),
    ],
)
def test_auto_detection_matches_the_explicit_format(
    fixture: str, expected: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    assert detect_format(path) == expected
    auto = load_problems(path, skip_invalid=True)
    explicit = load_problems(path, fmt=expected, skip_invalid=True)
    assert auto.rows == explicit.rows and auto.rows


def test_explicit_format_that_does_not_fit_names_the_detected_one(mathverse_json: Path) -> None:
    with pytest.raises(DataError, match=r":#0: ID: field missing for format 'wemath' .*mathverse"):
        load_problems(mathverse_json, fmt="wemath")


def test_bad_format_name_directory_and_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fmt: unknown format 'mathvizta'"):
        load_problems(tmp_path, fmt="mathvizta")
    with pytest.raises(DataError, match=r"is a directory without problems\.jsonl"):
        load_problems(tmp_path)
    (tmp_path / "data.csv").write_text("pid,question\n")
    with pytest.raises(DataError, match=r"unknown extension '\.csv'"):
        load_problems(tmp_path / "data.csv")
    with pytest.raises(DataError, match=r"no such file"):
        load_problems(tmp_path / "missing.json")
    unknown = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "x", "gold": "y"}])
    with pytest.raises(DataError, match=r"other\.jsonl:1: cannot tell the format"):
        load_problems(unknown)


def test_embedded_bytes_that_are_not_an_image(tmp_path: Path) -> None:
    rows = [mathverse_records()[0] | {"image": hf_image(b"not an image", "x.png")}]
    path = write_parquet(tmp_path / "testmini.parquet", rows)
    with pytest.raises(
        DataError, match=r"testmini\.parquet:row 0: image: embedded bytes are not an image"
    ):
        load_problems(path)


# ---- our own format and path safety -----------------------------------------------------------


def ours_row(pid: str, image: str | None) -> dict[str, Any]:
    row = {"pid": pid, "question": "How many?", "image": image, "answer": "3"}
    return row | {"answer_type": "integer", "question_type": "free_form"}


def test_ours_directory_and_jsonl(tmp_path: Path) -> None:
    write_image(tmp_path / "bench" / "images" / "a.png")
    path = write_jsonl(tmp_path / "bench" / "problems.jsonl", [ours_row("a", "images/a.png")])
    assert detect_format(tmp_path / "bench") == "ours"
    assert [r["pid"] for r in load_problems(tmp_path / "bench").rows] == ["a"]
    other = write_jsonl(tmp_path / "bench" / "mine.jsonl", [ours_row("b", None)])
    assert detect_format(other) == "jsonl"
    assert load_problems(other, fmt="jsonl").rows[0]["pid"] == "b"
    assert load_problems(path, fmt="ours").rows[0]["image"] == "images/a.png"


@pytest.mark.parametrize("fmt", ["ours", "wemath"])
def test_image_paths_may_not_escape_the_root(tmp_path: Path, fmt: str) -> None:
    outside = write_image(tmp_path / "x.png")
    root = tmp_path / "data"
    for image, problem in [("../x.png", "escapes the dataset root"), (str(outside), "is absolute")]:
        if fmt == "ours":
            path = write_jsonl(root / "problems.jsonl", [ours_row("a", image)])
        else:
            record = wemath_record(1, *WEMATH_ROWS[0]) | {"image_path": image}
            path = write_json(root / "testmini.json", [record])
        with pytest.raises(DataError, match=rf"image: '{image}' {problem}"):
            load_problems(path)
        assert load_problems(path, skip_invalid=True).rows == []


def test_duplicate_pids_are_reported(mathverse_json: Path) -> None:
    records = json.loads(mathverse_json.read_text())
    write_json(mathverse_json, records + [records[0]])
    with pytest.raises(DataError, match=r":#4: pid: duplicate pid '3421'"):
        load_problems(mathverse_json)


# ---- convert ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["mathverse_parquet", "wemath_json", "mathvision_jsonl"])
def test_convert_writes_our_layout_that_loads_back(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    problems = load_problems(request.getfixturevalue(fixture))
    target = convert_problems(problems, tmp_path / "out")
    assert target == tmp_path / "out" / "problems.jsonl"
    again = load_problems(tmp_path / "out")
    assert len(again.rows) == len(problems.rows)
    for before, after in zip(problems.rows, again.rows, strict=True):
        assert after["image"].startswith("images/")
        assert after == before | {"image": after["image"]}
        assert again.image_path(after).read_bytes() == problems.image_path(before).read_bytes()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_convert_in_place_keeps_images(tmp_path: Path) -> None:
    write_image(tmp_path / "bench" / "images" / "a.png")
    write_jsonl(tmp_path / "bench" / "problems.jsonl", [ours_row("a", "images/a.png")])
    problems = load_problems(tmp_path / "bench")
    convert_problems(problems, tmp_path / "bench")
    assert load_problems(tmp_path / "bench").rows == problems.rows


def test_formats_constant_lists_every_adapter() -> None:
    assert FORMATS == ("ours", "jsonl", "mathvista", "mathvision", "wemath", "mathverse")


def test_convert_writes_manifest_and_skipped_rows(mathvista_json: Path, tmp_path: Path) -> None:
    problems = load_problems(mathvista_json, skip_invalid=True)
    out = tmp_path / "out"
    convert_problems(problems, out)
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["kind"] == "bench"
    assert manifest["config"] == {"source": str(mathvista_json)}
    assert manifest["skipped"] == 1
    assert manifest["counts"]["family"] == {"figure question answering": 3}
    assert manifest["counts"]["answer_type"] == {"float": 1, "integer": 1, "multi_choice": 1}
    lines = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert lines == [{"where": f"{mathvista_json}:pid=4", "reason": lines[0]["reason"], "pid": "4"}]
    assert "unsupported answer_type 'list'" in lines[0]["reason"]
    convert_problems(load_problems(out), out)  # nothing skipped now: no stale skipped.jsonl
    assert not (out / "skipped.jsonl").exists()
    assert json.loads((out / "casseat.json").read_text())["skipped"] == 0
