"""Bad inputs to the training side (synth, train, the loaders, model loading) replayed through the
CLI: each gives its exit code and one `error:` line naming the flag, file or line and the fix, with
no traceback, and leaves existing outputs alone. Servers are real HTTP servers on 127.0.0.1 and
models are the tiny seeded ones."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from casseat_cli.cli import main
from casseat_edge.artifacts import check_out_dir, read_jsonl, sha256_file
from casseat_edge.bench import BenchConfig, make_bench
from casseat_edge.errors import CasseatError, DataError
from casseat_edge.models import load_model, resolve_model
from tests.test_sft import write_short_samples
from training.sft.run import is_interrupted_run
from training.synth.config import SynthConfig
from training.synth.teachers.base import SynthItem
from training.synth.teachers.openai import OpenAIRequestError, OpenAITeacher

TRAIN_FAST = ("--max-steps", "1", "--batch-size", "2", "--save-steps", "0", "--lora-r", "4")
LATIN1 = "Größe".encode("latin-1")  # b"Gr\xf6\xdfe": not UTF-8


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result: Result, code: int, *needles: str) -> str:
    """The run exited with `code` through SystemExit (no escaped exception) and printed exactly
    one `error:` line, containing every needle, and no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip() == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def tree(path: Path) -> dict[str, str]:
    """Every file under `path` with its content hash: to show a directory was not touched."""
    return {
        str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad-inputs") / "bench"
    make_bench(BenchConfig(out=str(out), n=8, seed=2))
    return out


def write_samples(out: Path) -> Path:
    """4 short captioned cot samples with one image each (test_sft's writer)."""
    return write_short_samples(out, n=4)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_samples(tmp_path_factory.mktemp("bad-inputs") / "samples")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> Path:
    """A finished `train` run (a model directory with its manifest)."""
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    result = invoke("train", "--data", samples, "--model", "tiny:llama", "--out", out, *TRAIN_FAST)
    assert result.exit_code == 0, result.stderr
    return out


def corrupt_copy(tmp_path: Path, how: str) -> Path:
    """tiny:llama copied into tmp_path with its model.safetensors truncated or random bytes."""
    model = tmp_path / f"llama-{how}"
    shutil.copytree(resolve_model("tiny:llama").path, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.write_bytes(bytes(range(256)) * 64)
    return model


# ---------------------------------------------------------------- 1. train --overwrite
def test_overwrite_leaves_a_folder_that_is_not_a_model(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    result = invoke(
        "train", "--data", samples, "--model", "tiny:llama", "--out", out, "--overwrite",
        *TRAIN_FAST,
    )  # fmt: skip
    one_error(result, 1, str(out), "is not a casseat-edge model directory", "--overwrite")
    assert (out / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("bad", ["model spec", "data row", "corrupt weights", "config"])
def test_bad_inputs_with_overwrite_leave_the_run_intact(
    tmp_path: Path, samples: Path, trained: Path, bad: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree(run)
    assert "casseat.json" in before and "model.safetensors" in before
    args = {"--data": samples, "--model": "tiny:llama"}
    extra: tuple[str, ...] = ()
    if bad == "model spec":
        args["--model"] = "tiny:nope"
    elif bad == "data row":
        args["--data"] = write_samples(tmp_path / "data")
        with open(args["--data"] / "samples.jsonl", "a") as fh:
            fh.write('{"id": "x", "kind": "cot"}\n')
    elif bad == "corrupt weights":
        args["--model"] = corrupt_copy(tmp_path, "truncated")
    else:
        extra = ("--lr", "nan")
    flat = [item for pair in args.items() for item in pair]
    result = invoke("train", *flat, "--out", run, "--overwrite", *TRAIN_FAST, *extra)
    one_error(result, 2 if bad == "config" else 1)
    assert tree(run) == before


def test_overwrite_replaces_a_finished_run(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "run"
    for _ in range(2):  # the second run replaces the first
        result = invoke(
            "train", "--data", samples, "--model", "tiny:llama", "--out", out, "--overwrite",
            *TRAIN_FAST,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        (out / "stale.txt").write_text("from the first run")
    assert (out / "stale.txt").exists()  # written after the second run
    assert json.loads((out / "casseat.json").read_text())["kind"] == "model"


def test_overwrite_replaces_an_interrupted_run_only(tmp_path: Path) -> None:
    run = tmp_path / "interrupted"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"inputs": {}, "method": "lora", "model": "m"}))
    assert is_interrupted_run(run) and check_out_dir(run, True, "model", is_interrupted_run)
    synth_run = tmp_path / "synth"  # a synth run file is not a train run
    synth_run.mkdir()
    (synth_run / "run.json").write_text(json.dumps({"teacher": "procedural"}))
    with pytest.raises(CasseatError, match="is not a casseat-edge model directory"):
        check_out_dir(synth_run, True, "model", is_interrupted_run)


def test_student_overwrite_leaves_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    """The pipeline's student training has the same guard (API: it has no command of its own)."""
    from training.sft.student import StudentConfig, train_student

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    config = StudentConfig(data=(str(tmp_path / "synth"),), out=str(out), overwrite=True)
    with pytest.raises(CasseatError, match="is not a casseat-edge model directory"):
        train_student(config)
    assert (out / "notes.txt").read_text() == "my notes"


def test_overwrite_refuses_an_out_that_holds_the_data(tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = write_samples(out / "data")
    (out / "casseat.json").write_text(json.dumps({"kind": "model"}))
    result = invoke(
        "train", "--data", data, "--model", "tiny:llama", "--out", out, "--overwrite", *TRAIN_FAST
    )
    one_error(result, 2, f"--out {out}: holds --data")
    assert (data / "samples.jsonl").is_file()


# ---------------------------------------------------------------- 2. openai teacher redirects
class RecordingServer:
    """A real HTTP server on 127.0.0.1 that records every request; `redirect_to` makes it answer
    each with `status` and that Location, else with a chat completion."""

    def __init__(self, status: int = 200, redirect_to: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append({"method": self.command, "headers": dict(self.headers)})
                if redirect_to:
                    self.send_response(status)
                    self.send_header("Location", redirect_to + "/chat/completions")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": "Final answer: 1"}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Any]:
    started: list[RecordingServer] = []

    def start(status: int = 200, redirect_to: str | None = None) -> RecordingServer:
        started.append(RecordingServer(status, redirect_to))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_never_carries_the_key(servers: Any, bench: Path, monkeypatch: Any, status: int):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    target = servers()
    first = servers(status, redirect_to=target.url)
    config = SynthConfig(problems=str(bench), retries=2, max_new_tokens=8)
    teacher = OpenAITeacher(f"openai:{first.url}#m", f"{first.url}#m", config)
    row = next(row for _, row in read_jsonl(bench / "problems.jsonl"))
    item = SynthItem(row, bench / row["image"])
    with pytest.raises(OpenAIRequestError) as info:
        teacher.generate([[{"role": "user", "content": "hi"}]], [item])
    message = str(info.value)
    assert f"HTTP {status}, a redirect to {target.url}/chat/completions" in message
    assert "\n" not in message
    assert len(first.requests) == 1  # not retried: every request would be redirected
    assert first.requests[0]["headers"]["Authorization"] == "Bearer sk-secret"
    assert target.requests == []  # never contacted, so never saw the key


def test_redirect_ends_synth_with_one_line(
    servers: Any, bench: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    target = servers()
    first = servers(302, redirect_to=target.url)
    result = invoke(
        "synth", "--problems", bench, "--out", tmp_path / "s", "--teacher",
        f"openai:{first.url}#m@captions", "--split", "", "--retries", "0",
    )  # fmt: skip
    one_error(result, 1, "HTTP 302, a redirect to", "put the URL the server redirects to")
    assert target.requests == []


# ---------------------------------------------------------------- 3. synth numeric flags
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--retries", "-1"),
        ("--timeout-s", "-1"),
        ("--timeout-s", "0"),
        ("--timeout-s", "nan"),
        ("--timeout-s", "inf"),
        ("--temperature", "nan"),
        ("--temperature", "-0.5"),
        ("--limit", "-1"),
        ("--threads", "-2"),
        ("--n-ctx", "0"),
        ("--concurrency", "0"),
        ("--max-new-tokens", "0"),
        ("--error-rate", "nan"),
        ("--held-out", "nan"),
        ("--max-image-pixels", "0"),
    ],
)
def test_synth_refuses_bad_numbers(tmp_path: Path, bench: Path, flag: str, value: str) -> None:
    result = invoke("synth", "--problems", bench, "--out", tmp_path / "s", flag, value)
    one_error(result, 2, f"error: {flag}: must be", value)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- 4. empty or filtered problems
def test_empty_problems_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "problems.jsonl").write_text("\n")
    result = invoke("synth", "--problems", tmp_path / "p", "--out", tmp_path / "s")
    one_error(result, 1, str(tmp_path / "p" / "problems.jsonl"), "no problems", "bench make")
    assert not (tmp_path / "s").exists()


def test_all_rows_skipped_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    row = {"pid": "1", "question": "How many?", "image": "missing.png", "choices": None,
           "answer": "3", "answer_type": "integer", "precision": None, "unit": None,
           "question_type": "free_form", "metadata": {}}  # fmt: skip
    (tmp_path / "p" / "problems.jsonl").write_text(json.dumps(row) + '\n{"pid": \n')
    result = invoke(
        "synth", "--problems", tmp_path / "p", "--out", tmp_path / "s", "--skip-invalid"
    )
    one_error(result, 1, "no valid problem: all 2 rows were skipped", "problems.jsonl:")


@pytest.mark.parametrize(
    ("flags", "fix"),
    [
        (("--families", "no_such_family"), "family_not_allowed: 8); widen --families"),
        (("--max-question-chars", "3"), "question_too_long: 8); raise --max-question-chars"),
    ],
)
def test_every_problem_filtered_is_an_error(tmp_path: Path, bench: Path, flags, fix) -> None:
    result = invoke("synth", "--problems", bench, "--out", tmp_path / "s", "--split", "", *flags)
    one_error(result, 1, "the source filters removed all 8 problems", fix)
    assert not (tmp_path / "s").exists()


def test_small_runs_still_work(tmp_path: Path, bench: Path) -> None:
    """One problem, and a teacher whose every solution is wrong (no CoT sample kept): both are
    ordinary runs, not errors."""
    for name, flags in {"one": ("--limit", "1"), "wrong": ("--error-rate", "1")}.items():
        result = invoke(
            "synth", "--problems", bench, "--out", tmp_path / name, "--split", "", *flags, "--json"
        )
        assert result.exit_code == 0, result.stderr
        stats = json.loads(result.stdout)
        assert stats["problems"] == (1 if name == "one" else 8)
    assert stats["samples"]["train"].get("cot", 0) == 0 and stats["rejections"]["labeled"]


# ---------------------------------------------------------------- 5. non-UTF-8 JSONL
def test_non_utf8_problems_line(tmp_path: Path, bench: Path) -> None:
    problems = tmp_path / "p"
    shutil.copytree(bench, problems)
    lines = (problems / "problems.jsonl").read_bytes().splitlines(keepends=True)
    bad = lines[2].replace(b'"question": "', b'"question": "' + LATIN1, 1)
    assert bad != lines[2]
    lines[2] = bad
    (problems / "problems.jsonl").write_bytes(b"".join(lines))
    result = invoke("synth", "--problems", problems, "--out", tmp_path / "s", "--split", "")
    one_error(result, 1, f"{problems / 'problems.jsonl'}:3: not UTF-8", "re-save the file as UTF-8")
    result = invoke("bench", "check", problems)
    one_error(result, 1, "problems.jsonl:3: not UTF-8")


def test_non_utf8_official_files(tmp_path: Path) -> None:
    """MATH-Vision JSONL (a bad line is skippable) and a MathVista-style JSON file."""
    data = tmp_path / "MATH-V" / "data"
    data.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "MATH-V" / "1.png")
    record = {"id": "1", "question": "How many?", "options": [], "image": "1.png",
              "answer": "3", "solution": None, "level": 1, "subject": "counting"}  # fmt: skip
    good = json.dumps(record).encode()
    (data / "test.jsonl").write_bytes(good + b"\n" + good.replace(b"How", LATIN1) + b"\n")
    one_error(invoke("bench", "check", data / "test.jsonl"), 1, "test.jsonl:2: not UTF-8")
    skipped = invoke("bench", "check", data / "test.jsonl", "--skip-invalid", "--json")
    assert skipped.exit_code == 0, skipped.stderr
    assert json.loads(skipped.stdout)["skipped"] == 1
    official = tmp_path / "testmini.json"
    official.write_bytes(b'{\n"1": {\n"question": "' + LATIN1 + b'"}}\n')
    one_error(invoke("bench", "check", official), 1, "testmini.json:3: not UTF-8")


def test_non_utf8_samples_and_results(tmp_path: Path, bench: Path) -> None:
    data = write_samples(tmp_path / "data")
    with open(data / "samples.jsonl", "ab") as fh:
        fh.write(b'{"id": "' + LATIN1 + b'"}\n')
    result = invoke("train", "--data", data, "--model", "tiny:llama", "--out", tmp_path / "o")
    one_error(result, 1, f"{data / 'samples.jsonl'}:5: not UTF-8")
    assert not (tmp_path / "o").exists()
    results = tmp_path / "results.jsonl"
    results.write_bytes(b'{"pid": "' + LATIN1 + b'"}\n')
    one_error(invoke("score", results, "--bench", bench), 1, f"{results}:1: not UTF-8")
    with pytest.raises(DataError, match=r"results.jsonl:1: not UTF-8 text \(byte 0xf6"):
        list(read_jsonl(results))


# ---------------------------------------------------------------- 6. corrupt safetensors
@pytest.mark.parametrize("how", ["truncated", "random"])
def test_corrupt_weights_name_the_file(tmp_path: Path, bench: Path, samples: Path, how: str):
    model = corrupt_copy(tmp_path, how)
    weights = str(model / "model.safetensors")
    expected = (weights, "not a readable safetensors file", "download or save the model again")
    result = invoke("train", "--data", samples, "--model", model, "--out", tmp_path / "t")
    one_error(result, 1, *expected)
    assert not (tmp_path / "t").exists()
    result = invoke("export", "--model", model, "--format", "gguf", "--out", tmp_path / "g")
    one_error(result, 1, *expected)
    result = invoke(
        "eval", "--model", model, "--backend", "torch", "--bench", bench, "--split", "",
        "--out", tmp_path / "e", "--limit", "1",
    )  # fmt: skip
    one_error(result, 1, *expected)
    with pytest.raises(CasseatError, match="not a readable safetensors file"):
        load_model(str(model))


# ---------------------------------------------------------------- 7. train numeric flags
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--lr", "inf"),
        ("--epochs", "nan"),
        ("--epochs", "inf"),
        ("--epochs", "-1"),
        ("--warmup-ratio", "nan"),
        ("--warmup-ratio", "-0.1"),
        ("--weight-decay", "nan"),
        ("--lora-dropout", "nan"),
        ("--max-steps", "-1"),
        ("--batch-size", "0"),
        ("--grad-accum", "0"),
        ("--lora-r", "0"),
        ("--lora-alpha", "-4"),
        ("--max-length", "0"),
        ("--limit", "-1"),
        ("--save-steps", "-1"),
    ],
)
def test_train_refuses_bad_numbers(tmp_path: Path, samples: Path, flag: str, value: str) -> None:
    result = invoke("train", "--data", samples, "--out", tmp_path / "o", flag, value)
    one_error(result, 2, f"error: {flag}: must be", value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--max-steps", "--batch-size", "--lora-r"])
def test_integer_flags_refuse_nan(tmp_path: Path, samples: Path, flag: str) -> None:
    """click itself refuses a non-integer (its usage message, exit 2), naming the flag."""
    result = invoke("train", "--data", samples, "--out", tmp_path / "o", flag, "nan")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.stderr and "Traceback" not in result.stderr
