"""Our GGUF exports in a real Node client: node-llama-cpp (pinned by
tests/node-llama-cpp/package-lock.json; its own llama.cpp build, not llama-cpp-python's) loads the
text GGUF, tokenizes as our tokenizer does, renders our chat template's prompt and decodes the
same greedy tokens as our llama.cpp backend.

Two exports: the packaged SmolLM2-135M-Instruct through our GGUF writer at q8_0 (a real model, so
greedy decoding says something) and tiny:smolvlm's text model (the layout of a Cas-SEAT student:
Idefics3 source, the student's plain ChatML template). node-llama-cpp has no image input, so
images are out of scope here (tests/test_llamacpp_server.py covers them over HTTP).

A pitfall this pins: node-llama-cpp's automatic chat wrapper for these GGUFs is its own ChatML
wrapper, which puts a BOS token in front of the first `<|im_start|>`; SmolLM2's BOS *is*
`<|im_start|>`, so the prompt starts with it twice (and SmolLM2-Instruct's default system prompt
is left out). `resolveChatWrapper(model, {type: "jinjaTemplate"})` renders the GGUF's own
template: exactly our prompt ids (README, "Export, run and evaluate").

Needs node and `npm ci --omit=optional --prefix tests/node-llama-cpp` (scripts/setup.sh runs it;
Linux x64 only: the prebuilt CPU build is that platform's package); skipped with why otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from casseat_edge.preprocess import user_messages
from tests.conftest import has_module
from tests.tiny_exports import exported_gguf

CLIENT_DIR = Path(__file__).parent / "node-llama-cpp"
PACKAGE = CLIENT_DIR / "node_modules" / "node-llama-cpp" / "package.json"
QUESTION = "A rectangle is 3 by 4. What is its area? Think step by step."
MAX_TOKENS = 24
TEXTS = [
    "Hello world",
    "<|im_start|>user\nHi<|im_end|>\n",
    " 3.14 × 2 = 6.28, and 12 ÷ 4 = 3",
    "Step 1: the bar for 2021 reaches 45.\nVerdict: Accept\nFinal answer: 45",
    "  two spaces, a tab\tand émojis 📐✏️",
]

pytestmark = [
    pytest.mark.skipif(
        not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python"
    ),
    pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Node.js 18+) on PATH"),
    pytest.mark.skipif(
        not PACKAGE.is_file(),
        reason="needs node-llama-cpp in tests/node-llama-cpp: run "
        "`npm ci --omit=optional --prefix tests/node-llama-cpp` (Linux x64)",
    ),
]


def run_client(request: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(CLIENT_DIR / "client.mjs")],
        input=json.dumps(request), capture_output=True, text=True, timeout=600, cwd=CLIENT_DIR,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("model", "quant"), [("embedded:smollm2-135m-instruct", "q8_0"), ("tiny:smolvlm", "f32")]
)
def test_node_llama_cpp_reads_our_gguf_as_our_backend_does(model: str, quant: str) -> None:
    from transformers import AutoTokenizer

    from casseat_edge.models import resolve_model
    from runtime.backends import Conversation
    from runtime.backends.llamacpp import LlamaCppEngine

    text_gguf, _ = exported_gguf(model, quant)
    messages = user_messages(QUESTION, with_image=False)
    engine = LlamaCppEngine(text_gguf, n_ctx=1024, threads=1)
    try:
        conversation = Conversation(engine)
        ours = conversation.turn(messages, None, None, MAX_TOKENS)
        prompt, reply = (
            conversation.ids[: ours.prompt_tokens],
            conversation.ids[ours.prompt_tokens :],
        )
        while reply and engine.is_stop(reply[-1]):  # node stops before the end-of-generation token
            reply = reply[:-1]
    finally:
        engine.close()
    flat = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"])}
            for m in messages]  # fmt: skip
    answer = run_client({"model": str(text_gguf), "texts": TEXTS, "messages": flat,
                         "prompt_ids": prompt, "max_tokens": MAX_TOKENS})  # fmt: skip

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model).path)
    for text, ids in zip(TEXTS, answer["tokenize"], strict=True):
        assert ids == tokenizer(text, add_special_tokens=False).input_ids, text

    jinja, auto = answer["chat"]["jinjaTemplate"], answer["chat"]["auto"]
    assert jinja["wrapper"] == "JinjaTemplate" and jinja["ids"] == prompt
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert auto["wrapper"] == "ChatML" and auto["ids"][:2] == [start, start]  # the pitfall
    if model.startswith("tiny:"):  # the student's template: only the doubled <|im_start|> differs
        assert auto["ids"][1:] == prompt

    assert answer["greedy"] == reply and len(reply) > 4
