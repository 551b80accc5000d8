"""The OpenAI-compatible teacher against real HTTP servers on 127.0.0.1: llama-cpp-python's own
server running the packaged SmolLM2 (captions mode, a full cas-seat run), and a small scripted
`http.server` for the payload format, retries, refused requests and an unreachable port."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from casseat_edge.bench import BenchConfig, make_bench
from casseat_edge.errors import CasseatError, ConfigError
from casseat_edge.registry import TEACHERS
from tests.processes import stop
from training.synth.config import SynthConfig
from training.synth.teachers.base import SynthItem
from training.synth.teachers.openai import (
    OpenAIRequestError,
    OpenAITeacher,
    OpenAIUnreachableError,
    parse_spec,
)

SERVER_DEPS = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
COMPLETION = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Final answer: 13"}}],
    "usage": {
        "prompt_tokens": 40,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 32},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("openai") / "bench"
    make_bench(BenchConfig(out=str(out), n=9, seed=1))
    return out


def synth_items(bench: Path, n: int) -> list[SynthItem]:
    rows = [json.loads(line) for line in (bench / "problems.jsonl").read_text().splitlines()]
    return [SynthItem(row, bench / row["image"]) for row in rows[:n]]


def teacher_for(spec: str, bench: Path, **overrides: Any) -> OpenAITeacher:
    config = SynthConfig(problems=str(bench), **{"max_new_tokens": 48, **overrides})
    return TEACHERS.get("openai")(spec, spec.partition(":")[2], config)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server with the packaged SmolLM2; yields its /v1 URL."""
    for name in SERVER_DEPS:
        pytest.importorskip(name, reason="needs the llama extra: pip install 'casseat-edge[llama]'")
    from casseat_edge.models.embedded import embedded_gguf

    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()),
        "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1), "--verbose", "False",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_models(url, process, log, deadline=time.monotonic() + 60)
        yield url
    finally:
        stop(process)


def wait_for_models(url: str, process: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer {url}/models within 60 s:\n{log.read_text()}")


class ScriptedServer:
    """A real HTTP server that answers POSTs from a script of (status, body) and records them."""

    def __init__(self, script: list[tuple[int, dict[str, Any]]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["Content-Length"])
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers),
                     "body": json.loads(self.rfile.read(length))}
                )  # fmt: skip
                status, body = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def start(*script: tuple[int, dict[str, Any]]) -> ScriptedServer:
        servers.append(ScriptedServer(list(script)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_cas_seat_run_against_llama_cpp_server(llama_server: str, bench: Path) -> None:
    teacher = teacher_for(f"openai:{llama_server}#smollm2@captions", bench, concurrency=2)
    items = synth_items(bench, 3)
    outputs = sorted(teacher.run(items, "cas-seat"), key=lambda o: o.pid)
    assert [o.pid for o in outputs] == sorted(i.pid for i in items)
    for output in outputs:
        assert output.error is None
        assert output.stage1.strip() and output.stage2.strip()
        s1, s2 = output.stats["stage1"], output.stats["stage2"]
        assert 0 < s1["completion_tokens"] <= 48 and 0 < s2["completion_tokens"] <= 48
        # stage 2 resends stage 1's conversation plus its reply and the review turn
        assert s2["prompt_tokens"] > s1["prompt_tokens"] + s1["completion_tokens"]
        assert 0 < s1["new_prefill_tokens"] <= s1["prompt_tokens"] and s1["seconds"] > 0


def test_payload_images_and_usage(scripted: Any, bench: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    server = scripted((200, COMPLETION))
    teacher = teacher_for(f"openai:{server.url}/#vlm-7b", bench, temperature=0.5, seed=7)
    [item] = synth_items(bench, 1)
    [output] = teacher.run([item], "cas-seat")
    assert output.error is None and output.stage2 == "Final answer: 13"
    assert output.stats["stage1"]["prompt_tokens"] == 40
    assert output.stats["stage1"]["new_prefill_tokens"] == 8  # 40 minus 32 cached
    first, second = server.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test"
    body = second["body"]
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "seed")} == {
        "model": "vlm-7b", "max_tokens": 48, "temperature": 0.5, "seed": 7
    }  # fmt: skip
    image, text = body["messages"][0]["content"]
    assert image["type"] == "image_url" and text["type"] == "text"
    prefix, _, data = image["image_url"]["url"].partition(",")
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(data) == item.image_path.read_bytes()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == "Final answer: 13"
    assert isinstance(body["messages"][2]["content"], str)


def test_captions_mode_sends_no_image(scripted: Any, bench: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = scripted((200, COMPLETION))
    [item] = synth_items(bench, 1)
    teacher_for(f"openai:{server.url}#m@captions", bench).generate([stage1(item)], [item])
    [message] = server.requests[0]["body"]["messages"]
    assert message["content"].startswith("Image description: " + item.caption)
    assert server.requests[0]["body"]["model"] == "m"
    assert "Authorization" not in server.requests[0]["headers"]


@pytest.mark.parametrize("status", [429, 503])
def test_retries_overloaded_server(scripted: Any, bench: Path, status: int) -> None:
    busy = {"error": {"message": "server busy"}}
    server = scripted((status, busy), (status, busy), (200, COMPLETION))
    teacher = teacher_for(f"openai:{server.url}#m@captions", bench, retries=3)
    teacher.backoff_s = 0.01
    [item] = synth_items(bench, 1)
    [reply] = teacher.generate([stage1(item)], [item])
    assert reply.text == "Final answer: 13" and len(server.requests) == 3


def test_client_error_is_not_retried(scripted: Any, bench: Path) -> None:
    server = scripted((400, {"error": {"message": "This model's maximum context length is 2048"}}))
    teacher = teacher_for(f"openai:{server.url}#m@captions", bench, retries=3)
    [item] = synth_items(bench, 1)
    with pytest.raises(OpenAIRequestError) as info:
        teacher.generate([stage1(item)], [item])
    message = str(info.value)
    assert "\n" not in message and len(server.requests) == 1
    assert f"{server.url}/chat/completions" in message and "HTTP 400" in message
    assert "maximum context length is 2048" in message
    # a per-problem refusal is recorded on that problem; the run goes on
    [output] = teacher.run([item], "cas-seat")
    assert "HTTP 400" in output.error


def test_unreachable_server_fails_after_retries(bench: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # bound, then closed: nothing listens there
    teacher = teacher_for(f"openai:{url}#m@captions", bench, retries=1, timeout_s=2.0)
    teacher.backoff_s = 0.01
    items = synth_items(bench, 3)
    start = time.perf_counter()
    with pytest.raises(OpenAIUnreachableError) as info:
        teacher.generate([stage1(i) for i in items], items)
    message = str(info.value)
    assert "\n" not in message and url in message and "is the server running?" in message
    assert "after 2 attempts" in message and isinstance(info.value, CasseatError)
    with pytest.raises(OpenAIUnreachableError):  # the run stops instead of failing every problem
        list(teacher.run(items, "cas-seat"))
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("http://127.0.0.1:8000/v1#smollm2", ("http://127.0.0.1:8000/v1", "smollm2", True)),
        (
            "https://api.example/v1/#org/model@captions",
            ("https://api.example/v1", "org/model", False),
        ),
    ],
)
def test_parse_spec(argument: str, expected: tuple[str, str, bool]) -> None:
    assert parse_spec(argument) == expected


@pytest.mark.parametrize(
    "argument", ["http://127.0.0.1:8000/v1", "127.0.0.1:8000/v1#m", "http://h/v1#@captions"]
)
def test_bad_spec_is_a_config_error(argument: str) -> None:
    with pytest.raises(ConfigError, match="openai:URL#MODEL"):
        parse_spec(argument)


def stage1(item: SynthItem) -> list[dict[str, Any]]:
    from casseat_edge.prompts import stage1_messages

    return stage1_messages(item.problem)


def test_api_key_is_never_sent_over_plain_http_to_another_host(monkeypatch):
    from casseat_edge.errors import ConfigError
    from training.synth.config import SynthConfig
    from training.synth.teachers.openai import OpenAITeacher

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = SynthConfig(problems="x")
    with pytest.raises(ConfigError, match="refusing to send \\$OPENAI_API_KEY over plain http"):
        OpenAITeacher("openai:http://10.1.2.3:8000/v1#m", "http://10.1.2.3:8000/v1#m", config)
    assert OpenAITeacher("openai:https://api.example/v1#m", "https://api.example/v1#m", config)
    assert OpenAITeacher("openai:http://127.0.0.1:9/v1#m", "http://127.0.0.1:9/v1#m", config)
