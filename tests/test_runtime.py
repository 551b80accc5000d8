"""Runtime on the torch backend (tiny seeded models) and the policies on a scripted engine:
every policy runs, stage 2 prefills only its own new tokens, KV reuse changes no token, streaming
adds up, errors are clear, and `casseat-edge run --json` parses."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.errors import BackendUnavailableError, DataError, UnknownNameError
from casseat_edge.preprocess import render_prompt
from casseat_edge.prompts import POLICIES, PROMPT_HASH, assistant, stage1_messages, stage2_messages
from casseat_edge.registry import BACKENDS
from runtime import Cascade, Result
from runtime.backends import Conversation, Encoded, Engine
from runtime.backends.torch_backend import TorchEngine

PROBLEM = {"answer": "12", "answer_type": "integer", "caption": "A rectangle 3 wide, 4 tall."}
STAGES = {
    "direct": ["direct"],
    "cot": ["stage1"],
    "seat": ["seat"],
    "cas-seat": ["stage1", "stage2"],
    "cas-seat-refine": ["stage1", "stage2"],  # a random model almost never says Refine
}


@pytest.fixture(scope="module")
def tiny_llama() -> TorchEngine:
    return TorchEngine("tiny:llama")


@pytest.fixture(scope="module")
def tiny_vlm() -> TorchEngine:
    return TorchEngine("tiny:smolvlm")


@pytest.fixture(scope="module")
def tiny_qwen2vl() -> TorchEngine:
    return TorchEngine("tiny:qwen2vl")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (64, 48), (200, 20, 20)).save(path)
    return str(path)


# ---------------------------------------------------------------- a scripted engine
class ScriptedEngine(Engine):
    """Characters are tokens (id = code point, 0 = stop); replies come from a script."""

    name = "scripted"
    extra_name = "-"
    n_ctx = 100_000
    spec = "scripted"

    class arch:  # noqa: N801 - stands in for an ArchSpec class
        vision = False

    class processor:  # noqa: N801
        @staticmethod
        def apply_chat_template(messages, tokenize=False, add_generation_prompt=True) -> str:
            text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
            return text + ("<assistant>" if add_generation_prompt else "")

    def __init__(self, replies: list[str]) -> None:
        super().__init__()
        self.replies, self.reply, self.pos, self.cache = list(replies), "", 0, 0

    def encode(self, messages, image, caption) -> Encoded:
        return Encoded(self.tokenize(render_prompt(self.processor, self.arch, messages, caption)))

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def is_stop(self, token: int) -> bool:
        return token == 0

    def truncate(self, n_tokens: int) -> None:
        self.cache = min(self.cache, n_tokens)

    def _next(self) -> np.ndarray:
        logits = np.zeros(0x3000, dtype=np.float32)
        logits[ord(self.reply[self.pos]) if self.pos < len(self.reply) else 0] = 1.0
        self.pos += 1
        return logits

    def prefill(self, ids, start, extra) -> np.ndarray:
        assert self.cache == start
        self.cache = len(ids)
        self.reply, self.pos = self.replies.pop(0), 0
        return self._next()

    def step(self, token: int, position: int) -> np.ndarray:
        assert self.cache == position
        self.cache += 1
        return self._next()

    def model_bytes(self) -> int:
        return 0


def test_refine_rounds_are_bounded_and_use_stage3() -> None:
    refine = "Step 2 is wrong.\nVerdict: Refine\nFinal answer: 12"
    engine = ScriptedEngine(["Final answer: 10", refine, "Again: 12\nFinal answer: 12", refine,
                             "Final answer: 12", refine])  # fmt: skip
    cascade = Cascade(engine, policy="cas-seat-refine", max_refine_rounds=2)
    result = cascade.solve(None, "Area?", **PROBLEM)
    names = [s.name for s in result.stages]
    assert names == ["stage1", "stage2", "stage3.1", "stage2.2", "stage3.2", "stage2.3"]
    assert (result.verdict, result.answer, result.answer_source) == ("Refine", "12", "stage2.3")
    assert result.correct is True
    assert not engine.replies  # every scripted reply was used, no more


def test_refine_stops_on_accept() -> None:
    engine = ScriptedEngine(["Final answer: 12", "All holds.\nVerdict: Accept\nFinal answer: 12"])
    result = Cascade(engine, policy="cas-seat-refine", max_refine_rounds=3).solve(None, "Area?")
    assert [s.name for s in result.stages] == ["stage1", "stage2"]
    assert result.verdict == "Accept" and result.correct is None


def test_cas_seat_falls_back_to_stage1_answer_and_records_it() -> None:
    engine = ScriptedEngine(["3 x 4 = 12\nFinal answer: 12", "Looks fine."])
    result = Cascade(engine, policy="cas-seat").solve(None, "Area?", **PROBLEM)
    assert (result.answer, result.answer_source, result.verdict) == ("12", "stage1-fallback", None)
    engine = ScriptedEngine(["Final answer: 12", "Verdict: Refine\nFinal answer: 13"])
    result = Cascade(engine, policy="cas-seat").solve(None, "Area?", **PROBLEM)
    assert (result.answer, result.answer_source, result.correct) == ("13", "stage2", False)


def test_scripted_stage2_prefills_only_its_turn() -> None:
    engine = ScriptedEngine(["Final answer: 12", "Verdict: Accept\nFinal answer: 12"])
    result = Cascade(engine).solve(None, "Area?", **PROBLEM)
    s1, s2 = result.stages
    # the reply's stop token was sampled but never evaluated: it is the first new token
    own = len(f"</><user>{stage2_messages()[0]['content'][0]['text']}</><assistant>")
    assert s2.new_prefill_tokens == own
    assert s2.reused_tokens == s1.prompt_tokens + len("Final answer: 12")


# ---------------------------------------------------------------- torch, tiny models
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_on_torch(tiny_llama: TorchEngine, policy: str) -> None:
    result = Cascade(tiny_llama, policy=policy, max_new_tokens=6).solve(None, "Area?", **PROBLEM)
    assert isinstance(result, Result)
    assert [s.name for s in result.stages][:2] == STAGES[policy]
    assert result.backend == "torch" and result.prompt_hash == PROMPT_HASH
    assert result.correct in (True, False)
    for stage in result.stages:
        assert stage.completion_tokens >= 1 and stage.prompt_tokens > 0
        assert stage.decode_ms >= 0 and stage.ttft_ms >= stage.prefill_ms > 0
    json.dumps(result.to_dict())


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_vlm", "tiny_qwen2vl"])
def test_torch_stage2_prefills_only_its_own_tokens(
    which: str, request: pytest.FixtureRequest, image_path: str
) -> None:
    engine: TorchEngine = request.getfixturevalue(which)
    image = _image(engine, image_path)
    problem = {"question": "What is the area?", "answer_type": "integer", "image": "x"}
    conversation = Conversation(engine)
    first = stage1_messages(problem)
    out1 = conversation.turn(first, image, PROBLEM["caption"], max_new_tokens=8)
    second = [*first, assistant(out1.raw_text), *stage2_messages()]
    out2 = conversation.turn(second, image, PROBLEM["caption"], max_new_tokens=8)
    own_tokens = _own_tokens(engine, first, second, out1.raw_text)
    # a reply cut at max_new_tokens leaves its last token unevaluated: it is prefilled in stage 2
    pending = 1 if out1.stop_reason == "length" else 0
    assert out2.new_prefill_tokens == own_tokens + pending
    assert (
        out2.prompt_tokens
        == out1.prompt_tokens + out1.completion_tokens - (1 - pending) + own_tokens
    )
    # everything stage 1 evaluated (its prompt and all but its last sampled token) is reused
    assert out2.reused_tokens == out1.prompt_tokens + out1.completion_tokens - 1


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_vlm", "tiny_qwen2vl"])
def test_torch_kv_reuse_gives_the_same_tokens(
    which: str, request: pytest.FixtureRequest, image_path: str
) -> None:
    engine: TorchEngine = request.getfixturevalue(which)
    image = image_path if engine.vision else None
    runs = {}
    for reuse in (True, False):
        cascade = Cascade(engine, max_new_tokens=12, kv_reuse=reuse)
        pieces: list[str] = []
        cascade.on_token = lambda stage, piece: pieces.append(piece)  # noqa: B023
        runs[reuse] = (cascade.solve(image, "What is the area?", **PROBLEM), "".join(pieces))
    (reused, streamed), (fresh, _) = runs[True], runs[False]
    assert [s.text for s in reused.stages] == [s.text for s in fresh.stages]
    assert [s.completion_tokens for s in reused.stages] == [
        s.completion_tokens for s in fresh.stages
    ]
    s2, f2 = reused.stage("stage2"), fresh.stage("stage2")
    assert f2.new_prefill_tokens == f2.prompt_tokens == s2.prompt_tokens
    assert s2.new_prefill_tokens < f2.new_prefill_tokens
    assert streamed.replace(" ", "").replace("\n", "") == "".join(
        s.text for s in reused.stages
    ).replace(" ", "").replace("\n", "")


def test_vision_encode_is_timed_in_stage1_only(tiny_vlm: TorchEngine, image_path: str) -> None:
    seen: list[str] = []
    cascade = Cascade(tiny_vlm, max_new_tokens=4, on_stage=lambda s: seen.append(s.name))
    result = cascade.solve(image_path, "What color?", choices=["red", "blue"], answer="red")
    s1, s2 = result.stages
    assert seen == ["stage1", "stage2"]
    assert s1.encode_ms is not None and s1.encode_ms > 0 and s2.encode_ms == 0
    assert s1.preprocess_ms > 0 and result.correct in (True, False)


# ---------------------------------------------------------------- errors
def test_undecodable_image_is_a_data_error(tiny_vlm: TorchEngine, tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot decode image"):
        Cascade(tiny_vlm).solve(str(bad), "What color?")


def test_empty_question_and_unknown_fields(tiny_llama: TorchEngine) -> None:
    with pytest.raises(DataError, match="question: empty"):
        Cascade(tiny_llama).solve(None, "   ")
    with pytest.raises(Exception, match="unknown problem fields"):
        Cascade(tiny_llama).solve(None, "Area?", anwser="12")


def test_context_overflow_is_an_error(tiny_vlm: TorchEngine, image_path: str) -> None:
    with pytest.raises(DataError, match="exceeds the context.*image tokens are never cut"):
        Cascade(tiny_vlm, max_new_tokens=tiny_vlm.n_ctx).solve(image_path, "What color?")


def test_text_only_model_needs_a_caption(tiny_llama: TorchEngine, image_path: str) -> None:
    with pytest.raises(DataError, match="caption"):
        Cascade(tiny_llama).solve(image_path, "What color?")


def test_backends_are_registered_and_missing_ones_name_the_extra(monkeypatch) -> None:
    assert {"torch", "llama.cpp"} <= set(BACKENDS.names())
    with pytest.raises(UnknownNameError, match="backend 'onnx'"):
        Cascade("tiny:llama", backend="onnx")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)
    with pytest.raises(BackendUnavailableError, match=r"casseat-edge\[llama\]"):
        Cascade("embedded:smollm2-135m-instruct", backend="llama.cpp")


# ---------------------------------------------------------------- CLI
def test_cli_run_json_parses() -> None:
    args = ["run", "--model", "tiny:llama", "--question", "What is the area?", "--caption",
            "A 3 by 4 rectangle.", "--answer", "12", "--answer-type", "integer",
            "--max-new-tokens", "5", "--json"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert [s["name"] for s in doc["stages"]] == ["stage1", "stage2"]
    assert doc["policy"] == "cas-seat" and doc["peak_rss_mb"] > 0 and doc["model_bytes"] > 0
    assert doc["stages"][1]["new_prefill_tokens"] < doc["stages"][1]["prompt_tokens"]


def test_cli_run_human_output_and_errors(image_path: str, tmp_path) -> None:
    out = CliRunner().invoke(main, ["run", "--model", "tiny:smolvlm", "--image", image_path,
                                    "--question", "Color?", "--max-new-tokens", "3"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "== stage2 ==" in out.stdout and "prefill" in out.stdout and "verdict:" in out.stdout
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    out = CliRunner().invoke(main, ["run", "--model", "tiny:smolvlm", "--image", str(bad),
                                    "--question", "Color?"])  # fmt: skip
    assert out.exit_code == 1 and "cannot decode image" in out.stderr


def _image(engine: Engine, path: str) -> Any:
    from casseat_edge.preprocess import load_image

    return load_image(path) if engine.vision else None


def _own_tokens(engine: Engine, first: list, second: list, reply: str) -> int:
    """Tokens the stage-2 prompt adds after stage 1's conversation (prompt + reply)."""
    caption = PROBLEM["caption"]
    before = render_prompt(engine.processor, engine.arch, first, caption) + reply
    after = render_prompt(engine.processor, engine.arch, second, caption)
    assert after.startswith(before)
    return len(engine.tokenize(after[len(before) :]))


def test_profile_aggregates_repeats_without_warmups(tiny_llama: TorchEngine) -> None:
    from runtime.profiler import profile

    seen: list[str] = []
    cascade = Cascade(tiny_llama, max_new_tokens=4, on_stage=lambda s: seen.append(s.name))
    report = profile(cascade, None, "Area?", repeats=2, warmup=1, **PROBLEM)
    assert len(seen) == 6  # 1 warm-up + 2 repeats, two stages each
    stage2 = report["stages"]["stage2"]
    assert stage2["n"] == 2 and stage2["prefill_ms"]["p50"] > 0
    assert stage2["new_prefill_tokens"] < stage2["prompt_tokens"]
    assert report["peak_rss_mb"] > 0 and report["model_bytes"] > 0
    json.dumps(report)


# ---------------------------------------------------------------- caption-augmented prompts
def test_captions_option_adds_the_caption_after_the_image(
    tiny_vlm: TorchEngine, tiny_llama: TorchEngine, image_path: str
) -> None:
    question = "What is the area?"
    plain = Cascade(tiny_vlm, policy="cas-seat", max_new_tokens=3)
    captioned = Cascade(tiny_vlm, policy="cas-seat", max_new_tokens=3, captions=True)
    assert (plain.captions, captioned.captions) == (False, True)  # tiny: no manifest -> off
    without = plain.solve(image_path, question, **PROBLEM)
    with_caption = captioned.solve(image_path, question, **PROBLEM)
    caption_tokens = len(tiny_vlm.tokenize(f"Image description: {PROBLEM['caption']}\n"))
    for a, b in zip(without.stages, with_caption.stages):
        assert b.prompt_tokens == a.prompt_tokens + caption_tokens
    assert with_caption.stages[1].reused_tokens > 0  # stage 2 still continues stage 1's cache
    assert with_caption.options["captions"] is True
    with pytest.raises(DataError, match="captions: .* no caption"):
        captioned.solve(image_path, question, answer="12")
    # text-only models read the caption anyway: the option changes nothing for them
    assert Cascade(tiny_llama, policy="cot", captions=True).captions is False


def test_captions_default_follows_the_training_manifest(tmp_path) -> None:
    from runtime.cascade import trained_with_captions

    model = tmp_path / "student"
    model.mkdir()
    (model / "casseat.json").write_text(json.dumps({"kind": "model", "captions": True}))
    export = tmp_path / "export"
    export.mkdir()
    (export / "model-q8_0.gguf").write_bytes(b"")
    manifest = {"kind": "export", "config": {"model": str(model)}}
    (export / "casseat.json").write_text(json.dumps(manifest))
    assert trained_with_captions(model) is True
    assert trained_with_captions(export / "model-q8_0.gguf") is True  # export -> its source
    assert trained_with_captions(export) is True
    (model / "casseat.json").write_text(json.dumps({"kind": "model", "captions": False}))
    assert trained_with_captions(export) is False
    assert trained_with_captions("tiny:smolvlm") is False
    assert trained_with_captions(tmp_path / "missing") is False
