"""Our llama.cpp backend against a real llama.cpp client: llama-cpp-python's OpenAI-compatible
server (`python -m llama_cpp.server`, chat format `mtmd`: libmtmd's own image layout, the one
llama-server and Ollama use too), started on 127.0.0.1 with the same exported GGUF + mmproj.

Greedy decoding over real HTTP must give what `LlamaCppEngine` gives for the same conversation:
the same number of prompt tokens (for Idefics3 images libmtmd's 1x1 grid tile plus the global
image, so a backend that drops the tile is 7 tokens short here) and the same reply. A text GGUF
(tiny:llama, the server's default chat handler on the GGUF's template) is checked the same way.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from casseat_edge.preprocess import user_messages
from runtime.backends import Conversation
from tests.conftest import has_module
from tests.processes import stop
from tests.tiny_exports import exported_gguf

pytestmark = pytest.mark.skipif(
    not all(has_module(m) for m in ("llama_cpp", "gguf", "fastapi", "uvicorn", "sse_starlette")),
    reason="needs llama-cpp-python with its server extra (pip install 'casseat-edge[llama]')",
)
QUESTION = "What is the area of the rectangle?"
MAX_TOKENS = 24
STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


@contextlib.contextmanager
def serve(text_gguf: Path, mmproj: Path | None, log: Path) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free 127.0.0.1 port; yields its base URL."""
    port = _free_port()
    vision = ["--clip_model_path", str(mmproj), "--chat_format", "mtmd"] if mmproj else []
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(text_gguf), *vision,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
        "--n_threads_batch", "1", "--seed", "0", "--verbose", "False",
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                _get(base + "/v1/models")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not start in {STARTUP_S} s:\n{log.read_text()}")
                time.sleep(0.5)
        yield base
    finally:
        stop(process, grace_s=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server with tiny:smolvlm's F32 GGUF + mmproj (chat format mtmd)."""
    text_gguf, mmproj = exported_gguf("tiny:smolvlm")
    with serve(text_gguf, mmproj, tmp_path_factory.mktemp("server") / "server.log") as base:
        yield base, text_gguf


@pytest.fixture(scope="module")
def engine(server):
    from runtime.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(server[1], n_ctx=1024, threads=1)
    yield engine
    engine.close()


def _png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the server decodes the same pixels
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _server_reply(base: str, image: Image.Image | None) -> dict[str, Any]:
    content: Any = QUESTION
    if image is not None:
        content = [
            {"type": "image_url", "image_url": {"url": _png_url(image)}},
            {"type": "text", "text": QUESTION},
        ]
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,  # llama-cpp-python: the greedy sampler
        "repeat_penalty": 1.0,  # its default is 1.1: no penalties, plain argmax
        "seed": 0,
    }
    return _post(base + "/v1/chat/completions", body)


@pytest.mark.parametrize("width, height", [(64, 64), (300, 200)])
def test_server_greedy_reply_equals_our_backend(server, engine, width, height) -> None:
    base, _ = server
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), np.uint8)
    image = Image.fromarray(pixels)
    response = _server_reply(base, image)

    assert_same_reply(response, engine, image)  # prompt tokens: the same tile + global layout


def assert_same_reply(response: dict[str, Any], engine: Any, image: Image.Image | None) -> None:
    """The server's usage and text equal our greedy turn on the same conversation."""
    conversation = Conversation(engine)
    messages = user_messages(QUESTION, with_image=image is not None)
    ours = conversation.turn(messages, image, None, MAX_TOKENS)
    reply_ids = conversation.ids[ours.prompt_tokens :]
    # the server returns text without control tokens: compare like with like
    our_text = engine.session.llm.detokenize(reply_ids, special=False).decode("utf-8", "ignore")
    usage = response["usage"]
    assert usage["prompt_tokens"] == ours.prompt_tokens
    assert usage["completion_tokens"] == ours.completion_tokens - (ours.stop_reason == "stop")
    assert response["choices"][0]["message"]["content"] == our_text
    assert ours.completion_tokens > 4  # a reply long enough to compare


def test_text_model_server_reply_equals_our_backend(tmp_path) -> None:
    """A text GGUF (tiny:llama; the server renders the GGUF's own chat template)."""
    from runtime.backends.llamacpp import LlamaCppEngine

    text_gguf, _ = exported_gguf("tiny:llama")
    with serve(text_gguf, None, tmp_path / "server.log") as base:
        response = _server_reply(base, None)
    engine = LlamaCppEngine(text_gguf, n_ctx=1024, threads=1)
    try:
        assert_same_reply(response, engine, None)
    finally:
        engine.close()
