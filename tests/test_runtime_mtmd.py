"""Image GGUFs through our libmtmd driver (`casseat_edge.formats.mtmd`) and the llama.cpp backend/teacher,
on F32 exports of tiny:smolvlm (idefics3 mmproj) and tiny:qwen2vl (qwen2vl_merger, M-RoPE).

Each test takes seconds; the two exports (~10 s each) are made once per session.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from casseat_edge.errors import DataError, ModelSpecError
from casseat_edge.preprocess import encode, render_prompt, user_messages
from casseat_edge.prompts import assistant, stage1_messages, stage2_messages
from runtime import Cascade
from runtime.backends import Conversation
from tests.conftest import has_module
from tests.tiny_exports import exported_gguf

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)
PROBLEM = {"question": "What is 2+3?", "answer_type": "integer", "image": "<image>"}


def noise(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def smolvlm_gguf():
    return exported_gguf("tiny:smolvlm")


@pytest.fixture(scope="module")
def engine(smolvlm_gguf):
    from runtime.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(smolvlm_gguf[0], n_ctx=1024, threads=2)
    yield engine
    engine.close()


@pytest.mark.parametrize(
    "model, width, height",
    [
        ("tiny:smolvlm", 64, 64),
        ("tiny:smolvlm", 48, 40),
        ("tiny:smolvlm", 300, 200),
        ("tiny:qwen2vl", 112, 112),
        ("tiny:qwen2vl", 56, 84),
        ("tiny:qwen2vl", 300, 200),
    ],
)
def test_image_prompt_ids_equal_the_hf_processor(model, width, height) -> None:
    """One id per KV slot: text tokens and the image token per embedding, in the layout of
    libmtmd, which every llama.cpp client (llama-server, Ollama) uses. qwen2vl: the grid HF's
    min/max pixels give. idefics3: libmtmd always tiles, so an image within one tile is HF's
    1x1-grid layout (the tile, then the global image), not the processor's unsplit one."""
    from casseat_edge.formats.mtmd import LlamaSession
    from casseat_edge.models import load_model

    text_gguf, mmproj = exported_gguf(model)
    loaded = load_model(model)
    messages = user_messages("What is 2+3?")
    rendered = render_prompt(loaded.processor, loaded.arch, messages)
    session = LlamaSession(text_gguf, mmproj, n_ctx=512, threads=2)
    try:
        assert session.architecture == loaded.arch.architecture
        image = noise(0, width, height)
        if model == "tiny:smolvlm":
            hf_ids = _idefics3_grid_ids(loaded.processor, rendered, rows=1, cols=1)
        else:
            hf_ids = encode(loaded.processor, loaded.arch, messages, image=image)["input_ids"]
            hf_ids = hf_ids[0].tolist()
        prompt = session.tokenize_prompt(
            rendered.replace(loaded.arch.image_text, session.marker), [image]
        )
        assert prompt.ids == hf_ids
        spans = prompt.images
        assert len(spans) == (2 if model == "tiny:smolvlm" else 1)  # idefics3: tile + global
        for span in spans:
            assert prompt.ids[span.start : span.end] == [session.image_token] * span.n_tokens
        if model == "tiny:qwen2vl":  # M-RoPE: an image advances max(grid h, grid w) positions
            assert spans[0].n_pos < spans[0].n_tokens
    finally:
        session.close()


def _idefics3_grid_ids(processor, rendered: str, rows: int, cols: int) -> list[int]:
    """The ids HF's Idefics3 processor gives an image split into a rows x cols grid."""
    from transformers.models.idefics3.processing_idefics3 import get_image_prompt_string

    image_text = get_image_prompt_string(
        rows, cols, processor.image_seq_len, processor.fake_image_token,
        processor.image_token, processor.global_image_tag,
    )  # fmt: skip
    text = rendered.replace(processor.image_token, image_text)
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_stage2_prefills_only_its_own_tokens_and_the_image_is_encoded_once(engine) -> None:
    conversation = Conversation(engine)
    runs_before = engine.session.encoder_runs
    first = stage1_messages(PROBLEM)
    out1 = conversation.turn(first, noise(1), None, max_new_tokens=24)
    second = [*first, assistant(out1.raw_text), *stage2_messages()]
    out2 = conversation.turn(second, noise(1), None, max_new_tokens=8)
    before = render_prompt(engine.processor, engine.arch, first) + out1.raw_text
    after = render_prompt(engine.processor, engine.arch, second)
    own = len(engine.tokenize(after[len(before) :]))
    pending = 1 if out1.stop_reason == "length" else 0  # the last reply token was never evaluated
    assert out2.new_prefill_tokens == own + pending
    assert out2.reused_tokens == out1.prompt_tokens + out1.completion_tokens - 1
    assert engine.session.encoder_runs == runs_before + len(conversation.extra["images"])
    assert out1.encode_ms > 0 and out2.encode_ms == 0


def test_no_reuse_reprefills_everything_but_never_re_encodes(engine) -> None:
    cascade = Cascade(engine, max_new_tokens=12, kv_reuse=False)
    runs_before = engine.session.encoder_runs
    result = cascade.solve(noise(2), "What is 2+3?", answer="5", answer_type="integer")
    stage1, stage2 = result.stages
    assert stage2.new_prefill_tokens == stage2.prompt_tokens  # the whole conversation again...
    # ...from the kept embeddings: one encoder run per chunk (idefics3: the tile and the global)
    assert engine.session.encoder_runs == runs_before + 2
    assert stage1.encode_ms > 0 and stage2.encode_ms == 0


def test_prefill_on_cache_equals_full_prefill_with_an_image(engine) -> None:
    messages = stage1_messages(PROBLEM)
    encoded = engine.encode(messages, noise(3), None)
    ids, images = encoded.ids, encoded.extra["images"]
    engine.truncate(0)
    full = engine.prefill(ids, 0, encoded.extra)
    engine.truncate(0)
    engine.session.eval(ids[: encoded.image_end + 3], 0, images)
    assert np.array_equal(engine.prefill(ids, encoded.image_end + 3, None), full)
    with pytest.raises(ValueError, match="inside an image"):
        engine.truncate(images[0].start + 1)


def greedy(session, logits: np.ndarray, n: int) -> tuple[list[int], list[np.ndarray]]:
    tokens, all_logits = [], []
    for _ in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = session.step(tokens[-1])
        all_logits.append(logits)
    return tokens, all_logits


def test_snapshot_restore_gives_an_identical_continuation(engine) -> None:
    session = engine.session
    encoded = engine.encode(stage1_messages(PROBLEM), noise(4), None)
    session.truncate(0)
    logits = session.eval(encoded.ids, 0, encoded.extra["images"])
    state = session.snapshot()
    tokens_a, logits_a = greedy(session, logits, 6)
    session.restore(state)
    session.step(int(np.argsort(logits)[-2]))  # a branch: the runner-up token instead
    other = engine.encode(stage1_messages(PROBLEM), noise(5), None)  # even another conversation
    session.truncate(0)
    session.eval(other.ids, 0, other.extra["images"])
    session.restore(state)
    assert session.ids == encoded.ids
    tokens_b, logits_b = greedy(session, logits, 6)
    assert tokens_a == tokens_b
    assert all(np.array_equal(a, b) for a, b in zip(logits_a, logits_b))


def test_clear_errors(engine, smolvlm_gguf, tmp_path) -> None:
    from casseat_edge.formats.mtmd import LlamaSession

    text_gguf, _ = smolvlm_gguf
    bad = tmp_path / "mmproj-bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ModelSpecError, match="not a readable GGUF mmproj"):
        LlamaSession(text_gguf, bad, n_ctx=256, threads=1)
    qwen_mmproj = exported_gguf("tiny:qwen2vl")[1]  # made for another text model
    with pytest.raises(ModelSpecError, match="no single '<\\|image_pad\\|>' token"):
        LlamaSession(text_gguf, qwen_mmproj, n_ctx=256, threads=1)
    with pytest.raises(DataError, match="0 image marker"):
        engine.session.tokenize_prompt("no marker here", [noise(0)])
    small = LlamaSession(text_gguf, smolvlm_gguf[1], n_ctx=256, threads=1)
    try:
        long_text = f"<|im_start|>user\n{small.marker}" + "the same words again " * 80
        with pytest.raises(DataError, match="more than the context of 256; raise n_ctx"):
            small.tokenize_prompt(long_text, [noise(0)])
    finally:
        small.close()


def test_qwen2vl_cascade_positions_follow_the_image(tmp_path) -> None:
    """M-RoPE: text after the image sits at index - (n_tokens - n_pos); stage 2 on the cache
    gives exactly the logits of a full prefill of the same ids."""
    from runtime.backends.llamacpp import LlamaCppEngine

    text_gguf, _ = exported_gguf("tiny:qwen2vl")
    engine = LlamaCppEngine(text_gguf, n_ctx=1024, threads=2)
    try:
        conversation = Conversation(engine)
        first = stage1_messages(PROBLEM)
        out1 = conversation.turn(first, noise(6, 84, 56), None, max_new_tokens=8)
        span = engine.session.images[0]
        assert engine.session.position(span.end) == span.start + span.n_pos
        out2 = conversation.turn(
            [*first, assistant(out1.raw_text), *stage2_messages()], noise(6, 84, 56), None, 4
        )
        assert out2.reused_tokens == out1.prompt_tokens + out1.completion_tokens - 1
        ids = list(conversation.ids[: out2.prompt_tokens])
        engine.truncate(out2.reused_tokens)
        on_cache = engine.prefill(ids, out2.reused_tokens, None)
        engine.truncate(0)
        assert np.allclose(engine.prefill(ids, 0, conversation.extra), on_cache, atol=1e-4)
    finally:
        engine.close()


def test_llama_cpp_teacher_sees_the_image_and_reuses_stage1(smolvlm_gguf, tmp_path) -> None:
    from casseat_edge.artifacts import read_jsonl
    from casseat_edge.bench import BenchConfig, make_bench
    from training.synth import SynthConfig, synthesize

    bench = tmp_path / "bench"
    make_bench(BenchConfig(out=str(bench), n=8, seed=3, test_fraction=0.25))
    config = SynthConfig(problems=str(bench), teacher=f"llama.cpp:{smolvlm_gguf[0]}",
                         out=str(tmp_path / "s"), limit=3, max_new_tokens=16, threads=2)  # fmt: skip
    stats = synthesize(config)
    assert stats["problems"] == 3 and stats["teacher_errors"] == 0
    outputs = [row for _, row in read_jsonl(tmp_path / "s" / "teacher_outputs.jsonl")]
    for output in outputs:
        s1, s2 = output["stats"]["stage1"], output["stats"]["stage2"]
        assert s1["encoder_runs"] >= 1 and s2["encoder_runs"] == 0  # one run per image tile
        # stage 2 continues from stage 1's KV cache: only its own new tokens are evaluated
        assert s2["new_prefill_tokens"] < s2["prompt_tokens"] - s1["prompt_tokens"] + 5
        assert s2["reused_tokens"] >= s1["prompt_tokens"]  # the image among them
