"""The vllm runtime backend on a CPU machine: engine arguments, sampling, request building for text
and vision models, output tracking, errors, and the cascade end to end through `TurnConversation`
on a stand-in engine (the real engine runs in benchmarks/gpu_vllm_runtime.py on a GPU).

The stand-ins below are NOT vLLM: they honour the few calls of vLLM's `LLMEngine` that
`VllmEngine` makes (add_request / step / has_unfinished_requests / reset_prefix_cache, cumulative
`RequestOutput`-shaped outputs), with prefix-cache accounting modelled on vLLM's (16-token blocks).
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from casseat_cli.cli import main
from casseat_edge.errors import BackendUnavailableError, ConfigError, DataError, ModelSpecError
from casseat_edge.models import resolve_model
from casseat_edge.preprocess import encode, processor_tokenizer, render_prompt
from casseat_edge.prompts import assistant, stage1_messages, stage2_messages
from casseat_edge.registry import BACKENDS
from runtime import Cascade
from runtime.backends import TurnConversation, open_conversation
from runtime.backends.base import common_prefix
from runtime.backends.torch_backend import TorchEngine
from runtime.backends.vllm_backend import (
    TurnTracker,
    VllmEngine,
    engine_kwargs,
    sampling_kwargs,
)

BLOCK = 16  # vLLM's default KV block size: prefix caching reuses whole blocks only
CAPTION = "A rectangle 3 wide, 4 tall."
PROBLEM = {"answer": "12", "answer_type": "integer", "caption": CAPTION}
QUESTION = {"question": "What is the area?", "answer_type": "integer", "image": "x"}
PLACEHOLDER = {"tiny:smolvlm": "<image>", "tiny:qwen2vl": "<|image_pad|>"}


# ---------------------------------------------------------------- stand-ins (not vLLM)
def request_output(
    request_id: str, prompt: list[int], cached: int, text: str, ids: list[int], reason: Any
) -> Any:
    """An object shaped like vLLM's `RequestOutput` (the fields `TurnTracker` reads)."""
    completion = types.SimpleNamespace(text=text, token_ids=list(ids), finish_reason=reason or None)
    return types.SimpleNamespace(
        request_id=request_id,
        prompt_token_ids=list(prompt),
        num_cached_tokens=cached,
        finished=bool(reason),
        outputs=[completion],
    )


class StandInEngine:
    """NOT vLLM: a stand-in for the `LLMEngine` contract. One token per `step()`, cumulative
    outputs; a stop token ends the turn and, as in vLLM, is in `token_ids` but not in `text`;
    `num_cached_tokens` is the block-granular common prefix with what earlier requests computed
    (the last prompt token is always computed). Subclasses choose the generated ids."""

    def __init__(self, tokenizer: Any, stops: set[int], n_ctx: int = 4096) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.model_config = types.SimpleNamespace(max_model_len=n_ctx)
        self.requests: list[tuple[str, dict[str, Any], Any]] = []
        self.computed: list[list[int]] = []
        self.pending: list[Any] = []
        self.resets = 0

    def continuation(self, prompt: dict[str, Any], params: Any) -> list[int]:
        raise NotImplementedError

    def add_request(self, request_id: str, prompt: dict[str, Any], params: Any) -> None:
        ids = list(prompt["prompt_token_ids"])
        self.requests.append((request_id, prompt, params))
        tokens = self.continuation(prompt, params)
        cached = max((common_prefix(c, ids) for c in self.computed), default=0)
        cached = min(cached, len(ids) - 1) // BLOCK * BLOCK
        self.computed.append(ids + tokens[:-1])  # the last sampled token is never evaluated
        for k in range(1, len(tokens) + 1):
            done = k == len(tokens)
            stop = done and tokens[-1] in self.stops
            text = self.tokenizer.decode(tokens[: k - 1] if stop else tokens[:k])
            reason = ("stop" if stop else "length") if done else None
            self.pending.append(request_output(request_id, ids, cached, text, tokens[:k], reason))

    def step(self) -> list[Any]:
        return [self.pending.pop(0)] if self.pending else []

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending)

    def reset_prefix_cache(self) -> bool:
        self.computed.clear()
        self.resets += 1
        return True


class GreedyTorchStandIn(StandInEngine):
    """NOT vLLM: generates greedily with a real tiny torch model, from the prompt's token ids."""

    def __init__(self, torch_engine: TorchEngine) -> None:
        super().__init__(torch_engine.tokenizer, torch_engine._stops)
        self.torch = torch_engine

    def continuation(self, prompt: dict[str, Any], params: Any) -> list[int]:
        assert "multi_modal_data" not in prompt  # the text-only path
        ids, engine = prompt["prompt_token_ids"], self.torch
        engine.truncate(0)
        out = [engine.choose(engine.prefill(ids, 0, None))]
        while out[-1] not in self.stops and len(out) < params.max_tokens:
            out.append(engine.choose(engine.step(out[-1], len(ids) + len(out) - 1)))
        return out


class ScriptedStandIn(StandInEngine):
    """NOT vLLM: answers with scripted replies (text, then the stop token)."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        super().__init__(tokenizer, {tokenizer.eos_token_id})
        self.replies = list(replies)

    def continuation(self, prompt: dict[str, Any], params: Any) -> list[int]:
        ids = self.tokenizer(self.replies.pop(0), add_special_tokens=False)["input_ids"]
        return [*ids, self.tokenizer.eos_token_id][: params.max_tokens]


def sampling_params(**kwargs: Any) -> Any:
    return types.SimpleNamespace(**kwargs)  # stands in for vllm.SamplingParams


def scripted_engine(spec: str, replies: list[str]) -> tuple[VllmEngine, ScriptedStandIn]:
    ref = resolve_model(spec)
    stand_in = ScriptedStandIn(processor_tokenizer(ref.arch.load_processor(ref.path)), replies)
    return VllmEngine.from_llm(stand_in, ref, sampling_params), stand_in


@pytest.fixture(scope="module")
def tiny_llama() -> TorchEngine:
    return TorchEngine("tiny:llama")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 20, 20))


# ---------------------------------------------------------------- pure functions
def test_engine_kwargs_turn_prefix_caching_on() -> None:
    kwargs = engine_kwargs("/m/qwen", vision=True, quant="fp8", seed=3, max_model_len=4096)
    assert kwargs["enable_prefix_caching"] is True and kwargs["quantization"] == "fp8"
    assert kwargs["limit_mm_per_prompt"] == {"image": 1} and kwargs["max_model_len"] == 4096
    assert (kwargs["model"], kwargs["tokenizer"], kwargs["seed"]) == ("/m/qwen", "/m/qwen", 3)
    text = engine_kwargs("/m/llama", vision=False)
    assert "quantization" not in text and "max_model_len" not in text  # the checkpoint's own
    assert "limit_mm_per_prompt" not in text and text["dtype"] == "auto"


def test_sampling_kwargs_decode_like_hf() -> None:
    assert sampling_kwargs(7, 0.0, 5) == {
        "max_tokens": 7,
        "temperature": 0.0,
        "seed": 5,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }


def test_turn_tracker_times_streams_and_counts_cached_tokens() -> None:
    pieces: list[str] = []
    tracker = TurnTracker(start=10.0, on_text=pieces.append)
    prompt = list(range(40))
    steps = [
        (10.5, request_output("r", prompt, 32, "", [], None)),  # scheduled, nothing sampled
        (12.0, request_output("r", prompt, 32, "He", [5], None)),
        (12.2, request_output("r", prompt, 32, "He\ufffd", [5, 9], None)),  # half a character
        (12.5, request_output("r", prompt, 32, "Hello", [5, 9, 6], None)),
        (15.0, request_output("r", prompt, 32, "Hello!", [5, 9, 6, 7, 2], "stop")),
    ]
    deltas = [tracker.update(now, out) for now, out in steps]
    assert deltas == ["", "He", "", "llo", "!"] and pieces == ["He", "llo", "!"]
    assert tracker.finished
    got = tracker.result()
    assert (got.prefill_s, got.decode_s) == (2.0, 3.0)
    assert (got.prompt_tokens, got.cached_tokens, got.token_ids) == (40, 32, [5, 9, 6, 7, 2])
    assert (got.text, got.streamed, got.finish_reason) == ("Hello!", "Hello!", "stop")
    aborted = TurnTracker(start=0.0)
    aborted.update(1.0, request_output("r", prompt, 0, "x", [5], "abort"))
    with pytest.raises(DataError, match="finish_reason 'abort'"):
        aborted.result()


# ---------------------------------------------------------------- request building
def test_text_prompt_is_our_tokenizers_ids(tiny_llama: TorchEngine) -> None:
    engine, stand_in = scripted_engine("tiny:llama", ["B is 12.\nFinal answer: 12", "Fine."])
    conversation = open_conversation(engine)
    assert isinstance(conversation, TurnConversation)
    first = stage1_messages(QUESTION)
    out1 = conversation.turn(first, None, CAPTION, max_new_tokens=32)
    (_, request1, params), *_ = stand_in.requests
    ids1 = request1["prompt_token_ids"]
    assert "multi_modal_data" not in request1 and params.max_tokens == 32
    assert ids1 == tiny_llama.encode(first, None, CAPTION).ids  # what the other backends run
    rendered = render_prompt(engine.processor, engine.arch, first, CAPTION)
    bos = engine.tokenizer.bos_token
    if bos:  # no BOS beyond the ones the chat template writes
        assert ids1.count(engine.tokenizer.bos_token_id) == rendered.count(bos)
    assert out1.raw_text == "B is 12.\nFinal answer: 12" and out1.stop_reason == "stop"
    assert out1.completion_tokens == len(engine.tokenize(out1.raw_text)) + 1  # + the stop token
    second = [*first, assistant(out1.raw_text), *stage2_messages()]
    out2 = conversation.turn(second, None, CAPTION, max_new_tokens=32)
    ids2 = stand_in.requests[1][1]["prompt_token_ids"]
    reply_ids = engine.tokenize(out1.raw_text)
    assert ids2[: len(ids1) + len(reply_ids)] == ids1 + reply_ids  # what prefix caching needs
    assert ids2 == tiny_llama.encode(second, None, CAPTION).ids
    assert out2.reused_tokens == (len(ids1) + len(reply_ids)) // BLOCK * BLOCK
    assert out2.new_prefill_tokens == out2.prompt_tokens - out2.reused_tokens
    assert not out2.retokenized and out2.encode_ms is None


@pytest.mark.parametrize("spec", ["tiny:smolvlm", "tiny:qwen2vl"])
def test_vision_prompt_holds_the_placeholder_once(spec: str, image: Image.Image) -> None:
    engine, stand_in = scripted_engine(spec, ["It is red.\nFinal answer: 12", "Verdict: Accept"])
    conversation = TurnConversation(engine)
    first = stage1_messages(QUESTION)
    out1 = conversation.turn(first, image, CAPTION, max_new_tokens=32)
    request1 = stand_in.requests[0][1]
    assert request1["multi_modal_data"] == {"image": image}
    ids1 = request1["prompt_token_ids"]
    placeholder = engine.tokenizer.convert_tokens_to_ids(PLACEHOLDER[spec])
    assert ids1.count(placeholder) == 1
    assert engine.detokenize(ids1).count(engine.arch.image_text) == 1
    # the HF processor's expansion sits exactly where our one placeholder is
    expanded = encode(engine.processor, engine.arch, first, image=image)["input_ids"][0].tolist()
    at = ids1.index(placeholder)
    before, after = ids1[:at], ids1[at + 1 :]
    assert expanded[:at] == before and expanded[len(expanded) - len(after) :] == after
    assert len(expanded) > len(ids1)
    second = [*first, assistant(out1.raw_text), *stage2_messages()]
    text1 = render_prompt(engine.processor, engine.arch, first, CAPTION) + out1.raw_text
    assert render_prompt(engine.processor, engine.arch, second, CAPTION).startswith(text1)
    conversation.turn(second, image, CAPTION, max_new_tokens=32)
    request2 = stand_in.requests[1][1]
    reply_ids = engine.tokenize(out1.raw_text)
    assert request2["prompt_token_ids"][: len(ids1) + len(reply_ids)] == ids1 + reply_ids
    assert request2["multi_modal_data"] == {"image": image}
    with pytest.raises(DataError, match="image part but no image"):
        TurnConversation(engine).turn(first, None, CAPTION, max_new_tokens=4)


# ---------------------------------------------------------------- the cascade end to end
def test_cascade_on_a_stand_in_matches_torch_greedy(tiny_llama: TorchEngine) -> None:
    engine = VllmEngine.from_llm(GreedyTorchStandIn(tiny_llama), "tiny:llama", sampling_params)
    pieces: list[str] = []
    cascade = Cascade(engine, max_new_tokens=12, on_token=lambda _, piece: pieces.append(piece))
    ours = cascade.solve(None, "What is the area?", **PROBLEM)
    reference = Cascade(tiny_llama, max_new_tokens=12).solve(None, "What is the area?", **PROBLEM)
    assert ours.backend == "vllm" and [s.name for s in ours.stages] == ["stage1", "stage2"]
    assert [s.text for s in ours.stages] == [s.text for s in reference.stages]
    for mine, theirs in zip(ours.stages, reference.stages):
        assert (mine.prompt_tokens, mine.completion_tokens, mine.stop_reason) == (
            theirs.prompt_tokens,
            theirs.completion_tokens,
            theirs.stop_reason,
        )
    s2, r2 = ours.stage("stage2"), reference.stage("stage2")
    assert 0 < s2.new_prefill_tokens < s2.prompt_tokens
    # block-granular reuse: at most one block (and stage 1's unevaluated last token) more
    assert r2.new_prefill_tokens <= s2.new_prefill_tokens < r2.new_prefill_tokens + BLOCK
    assert "".join(pieces).replace(" ", "").replace("\n", "") == "".join(
        s.text for s in ours.stages
    ).replace(" ", "").replace("\n", "")
    fresh = Cascade(engine, max_new_tokens=12, kv_reuse=False)
    no_reuse = fresh.solve(None, "What is the area?", **PROBLEM).stage("stage2")
    assert no_reuse.new_prefill_tokens == no_reuse.prompt_tokens == s2.prompt_tokens
    assert no_reuse.text == s2.text and engine.llm_engine.resets == 2  # one per turn


# ---------------------------------------------------------------- errors and listing
def test_opening_without_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'casseat-edge\[gpu\]'"):
        BACKENDS.get("vllm")("tiny:llama")
    out = CliRunner().invoke(main, ["run", "--model", "tiny:llama", "--backend", "vllm",
                                    "--question", "Area?", "--caption", CAPTION])  # fmt: skip
    assert out.exit_code == 1 and "casseat-edge[gpu]" in out.stderr
    with pytest.raises(ConfigError, match="CUDA GPUs only, got device='cpu'"):
        VllmEngine("tiny:llama", device="cpu")


def test_gguf_and_export_specs_are_refused(tmp_path) -> None:
    gguf = tmp_path / "model-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelSpecError, match="needs an HF model directory.*got 'gguf'"):
        VllmEngine(str(gguf))
    export = tmp_path / "export"
    export.mkdir()
    (export / "casseat.json").write_text(json.dumps({"kind": "export", "config": {}}))
    with pytest.raises(ModelSpecError, match="got 'export'; pass the HF directory"):
        VllmEngine(str(export))


def test_list_backends_and_eval_quant() -> None:
    from runtime.evaluate import EvalConfig

    out = CliRunner().invoke(main, ["list", "backends", "--json"])
    assert out.exit_code == 0, out.output
    rows = {row["name"]: row for row in json.loads(out.stdout)["entries"]}
    assert rows["vllm"]["extra"] == "gpu"
    vllm = EvalConfig(bench="b", backend="vllm", quant="fp8").cascade_config()
    assert vllm.backend_options() == {"quant": "fp8"}
    torch = EvalConfig(bench="b", backend="torch", quant="fp8").cascade_config()
    assert torch.backend_options() == {}
