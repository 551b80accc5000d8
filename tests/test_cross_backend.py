"""Cross-backend parity of the whole cascade: on F32 artifacts of the same tiny model, greedy
cas-seat (stage 1, then stage 2 on stage 1's KV cache) gives token for token the same conversation
on torch (the reference), llama.cpp (GGUF + mmproj) and onnxruntime (ONNX export); and on
every backend stage 2 evaluates only the stage-2 prompt's own tokens.

Each backend is a parameter: a backend that is not registered, or an architecture its exporter
does not support, is skipped with the reason. When tokens differ, the failure names the stage and
step where they diverge, with both backends' top-2 logit gap and their max |logit diff| there (the
prefix up to that step is identical, so the logits are directly comparable).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from casseat_edge.errors import UnsupportedArchError
from casseat_edge.preprocess import render_prompt
from casseat_edge.prompts import assistant, stage1_messages, stage2_messages
from casseat_edge.registry import BACKENDS
from runtime.backends import Conversation
from tests.conftest import has_module
from tests.tiny_exports import exported_gguf, exported_onnx

MODELS = {  # model -> image side (None: text-only, reads the caption)
    "tiny:smolvlm": 64,
    "tiny:qwen2vl": 112,
    "tiny:llama": None,
}
SEEDS = (0, 1, 2)  # one random image per seed
CAPTION = "A rectangle 3 wide and 4 tall."
PROBLEM = {"question": "What is the area of the rectangle?", "answer_type": "integer",
           "image": "<image>"}  # fmt: skip
STAGE1_TOKENS, STAGE2_TOKENS = 32, 16


def _llamacpp(model: str) -> Any:
    from runtime.backends.llamacpp import LlamaCppEngine

    return LlamaCppEngine(exported_gguf(model)[0], n_ctx=2048, threads=2)


def _onnxruntime(model: str) -> Any:
    from runtime.backends.onnxruntime_backend import OrtEngine

    return OrtEngine(exported_onnx(model), threads=2)


def _torch(model: str) -> Any:
    from runtime.backends.torch_backend import TorchEngine

    return TorchEngine(model)


ENGINES = {"torch": (_torch, "torch"), "llama.cpp": (_llamacpp, "llama_cpp"),
           "onnxruntime": (_onnxruntime, "onnxruntime")}  # fmt: skip


def open_engine(backend: str, model: str) -> Any:
    if backend not in BACKENDS:
        pytest.skip(f"backend {backend!r} is not registered (runtime/backends/)")
    factory, module = ENGINES[backend]
    if not has_module(module):
        pytest.skip(f"backend {backend!r} needs the {module} package")
    try:
        return factory(model)
    except UnsupportedArchError as exc:
        pytest.skip(f"{backend} cannot export {model}: {exc}")


def image_for(model: str, seed: int) -> Image.Image | None:
    side = MODELS[model]
    if side is None:
        return None
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), np.uint8))


class Recorder:
    """Wraps an engine's greedy choice to keep the logits of every step."""

    def __init__(self, engine: Any) -> None:
        self.steps: list[np.ndarray] = []
        self._choose = engine.choose
        engine.choose = self

    def __call__(self, logits: np.ndarray) -> int:
        self.steps.append(np.array(logits, dtype=np.float32))
        return self._choose(logits)


def run_cascade(engine: Any, model: str, seed: int) -> dict[str, Any]:
    """Greedy stage 1 + stage 2 on one conversation: ids, per-stage outputs, per-step logits."""
    recorder = Recorder(engine)
    try:
        image = image_for(model, seed)
        conversation = Conversation(engine)
        first = stage1_messages(PROBLEM)
        out1 = conversation.turn(first, image, CAPTION, STAGE1_TOKENS)
        second = [*first, assistant(out1.raw_text), *stage2_messages()]
        out2 = conversation.turn(second, image, CAPTION, STAGE2_TOKENS)
    finally:
        engine.choose = recorder._choose
    before = render_prompt(engine.processor, engine.arch, first, CAPTION) + out1.raw_text
    after = render_prompt(engine.processor, engine.arch, second, CAPTION)
    return {"ids": list(conversation.ids), "stages": (out1, out2), "steps": recorder.steps,
            "stage2_own": len(engine.tokenize(after[len(before) :]))}  # fmt: skip


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, int], dict[str, Any]]:
    """Torch runs, computed once per (model, seed)."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for model in MODELS:
        engine = _torch(model)
        for seed in SEEDS:
            runs[model, seed] = run_cascade(engine, model, seed)
    return runs


def divergence(ref: dict[str, Any], got: dict[str, Any]) -> str:
    """Where two greedy runs first chose differently, with the logit evidence at that step."""
    for step, (a, b) in enumerate(zip(ref["steps"], got["steps"])):
        if int(a.argmax()) != int(b.argmax()):
            gaps = [float(np.diff(np.sort(x)[-2:])[0]) for x in (a, b)]
            vocab = min(a.size, b.size)
            diff = float(np.abs(a[:vocab] - b[:vocab]).max())
            stage = 1 if step < ref["stages"][0].completion_tokens else 2
            return (f"stage {stage}, step {step}: top-1 {int(a.argmax())} vs {int(b.argmax())}; "
                    f"top-2 gap {gaps[0]:.2e} vs {gaps[1]:.2e}; max |logit diff| {diff:.2e}")  # fmt: skip
    first = next((i for i, (x, y) in enumerate(zip(ref["ids"], got["ids"])) if x != y), None)
    return f"same choices; ids differ first at index {first} (prompt tokenization)"


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("backend", ["llama.cpp", "onnxruntime"])
def test_greedy_cas_seat_tokens_equal_torch(backend: str, model: str, reference) -> None:
    engine = open_engine(backend, model)
    try:
        for seed in SEEDS:
            ref, got = reference[model, seed], run_cascade(engine, model, seed)
            assert got["ids"] == ref["ids"], f"{backend} vs torch, {model} seed {seed}: " + (
                divergence(ref, got)
            )
            for mine, theirs in zip(got["stages"], ref["stages"]):
                assert (mine.prompt_tokens, mine.new_prefill_tokens, mine.completion_tokens) == (
                    theirs.prompt_tokens, theirs.new_prefill_tokens, theirs.completion_tokens
                )  # fmt: skip
    finally:
        engine.close()
    # meaningful: the model generated text (not an immediate stop) in stage 1
    assert max(reference[model, s]["stages"][0].completion_tokens for s in SEEDS) > 4


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("backend", ["torch", "llama.cpp", "onnxruntime"])
def test_stage2_new_prefill_is_the_stage2_prompts_own_tokens(backend: str, model: str) -> None:
    engine = open_engine(backend, model)
    try:
        run = run_cascade(engine, model, seed=0)
    finally:
        engine.close()
    out1, out2 = run["stages"]
    pending = 1 if out1.stop_reason == "length" else 0  # stage 1's last token was not evaluated
    assert out2.new_prefill_tokens == run["stage2_own"] + pending
    assert out2.reused_tokens == out1.prompt_tokens + out1.completion_tokens - 1
