"""Verification of a GGUF export against the PyTorch model it came from (on by default).

Rows, each with `passed`:
- `tokenizer`: llama.cpp's token ids equal our HF tokenizer's on varied text (math, unicode,
  whitespace runs, chat markup);
- `logits`: next-token logits of llama.cpp (`logits_all=True`) vs PyTorch on the same tokens of
  real text: top-1 agreement, mean KL(torch || llama.cpp), max |diff| relative to the largest
  torch logit; bounds per type live on `quantize.GGUF_TYPES`;
- `generate`: llama.cpp loads the file and generates greedily;
- `vision` (with an mmproj): libmtmd encodes two different images into the same prompt and the
  next-token logits differ ("vision survived"), and the image became image tokens;
- `image_embeddings` (with an mmproj): libmtmd's embeddings of one image (sized so that neither
  side resizes it) vs PyTorch's vision tower + connector: max |diff| relative to max |torch| and
  the lowest per-token cosine, bounds per mmproj type in `IMAGE_EMBEDDING_BOUNDS`; the row also
  records both sides' image token counts (libmtmd lays Idefics3 images out as grid tiles plus an
  overview even where HF encodes the global image only).

    rows = verify_text(loaded, "model-f16.gguf", "f16", positions=200)
    rows += verify_vision("model-f16.gguf", "mmproj-model-f16.gguf", 64)
    rows.append(verify_image_embeddings(loaded, "model-f16.gguf", "mmproj-f16.gguf", "f16"))
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.parity import logit_parity
from export.gguf.quantize import GGUF_TYPES

# Our own parity text: ordinary prose, arithmetic and chat markup, long enough for 200+ positions.
PARITY_TEXT = (
    "<|im_start|>system\nYou are a careful tutor who explains each step.<|im_end|>\n"
    "<|im_start|>user\nA rectangle is 3 cm wide and 4 cm long. What is its area, and how long "
    "is its diagonal?<|im_end|>\n<|im_start|>assistant\nThe area of a rectangle is its width "
    "times its length, so the area is 3 x 4 = 12 square centimetres. The diagonal splits the "
    "rectangle into two right triangles, so by the Pythagorean theorem its length is the square "
    "root of 3 squared plus 4 squared, which is the square root of 9 + 16 = 25, that is 5 cm.\n"
    "Final answer: area 12 cm^2, diagonal 5 cm.<|im_end|>\n<|im_start|>user\nA bar chart shows "
    "apples 14, pears 9 and plums 21. How many fruits are there in total, and which bar is the "
    "tallest?<|im_end|>\n<|im_start|>assistant\nAdding the three bars gives 14 + 9 + 21 = 44 "
    "fruits. The tallest bar belongs to the plums, with 21, which is more than the apples by 7 "
    "and more than the pears by 12. The clock on the wall reads a quarter past three, so the "
    "hour hand sits just after the 3 and the minute hand points at the 3 as well. When we check "
    "the work again, every sum matches the chart, so the answer stands.\nFinal answer: 44; "
    "plums.<|im_end|>\n"
)
TOKENIZER_SAMPLES = (
    "What is 7 + 5? The answer is 12.",
    "Angles: 35°, 55° and 90° sum to 180°; π ≈ 3.14159.",
    "  leading spaces,\ttabs\nand\n\nnewlines   trailing  ",
    "Ünïcödé, emoji 🙂, 日本語のテキスト, and ελληνικά.",
    "<|im_start|>user\nx=1234567890<|im_end|>\n<|im_start|>assistant\n",
    "don't, won't, I'm, they'll; CamelCaseWords and snake_case_names",
)
VISION_PROMPT = "<|im_start|>user\n{marker}What number is shown?<|im_end|>\n<|im_start|>assistant\n"
VISION_MIN_DIFF = 1e-3  # smallest max |logit change| between two images that counts as "seen"
# mmproj type -> (max |diff| / max |torch|, min per-token cosine). libmtmd runs attention with f16
# K/V and the patch convolution on f16 im2col even for f32 files; measured on the tiny models
# (rel / min cosine, smolvlm / qwen2vl / qwen2.5vl): f32 3.1e-4..4.2e-4 / 1.0, f16 4.5e-4..5.8e-4 /
# 1.0, q8_0 8e-3..1.2e-2 / 0.99986; bounds with ~5x margin.
IMAGE_EMBEDDING_BOUNDS = {"f32": (2e-3, 0.9999), "f16": (3e-3, 0.9999), "q8_0": (5e-2, 0.999)}


@contextlib.contextmanager
def llama_model(path: str | Path, n_ctx: int = 1024, threads: int = 0) -> Iterator[Any]:
    """A llama.cpp model with all logits kept, closed on exit (not at interpreter teardown)."""
    import llama_cpp

    kwargs = {"n_threads": threads} if threads else {}
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0, **kwargs)
    try:
        yield llm
    finally:
        llm.close()


def verify_text(
    loaded: Any, gguf_path: str | Path, quant: str, positions: int = 200, threads: int = 0
) -> list[dict[str, Any]]:
    """Tokenizer, logits and generation rows for one text GGUF."""
    tokenizer = loaded.tokenizer
    ids = parity_ids(tokenizer, positions)
    torch_logits = torch_text_logits(loaded.model, ids)
    with llama_model(gguf_path, n_ctx=max(512, len(ids) + 64), threads=threads) as llm:
        rows = [tokenizer_row(llm, tokenizer)]
        llm.eval(ids)
        cpp_logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
        rows.append(logits_row(torch_logits, cpp_logits, quant, Path(gguf_path).name))
        rows.append(generate_row(llm, tokenizer))
    return rows


def parity_ids(tokenizer: Any, positions: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < positions:
        ids += tokenizer(PARITY_TEXT, add_special_tokens=False)["input_ids"]
    return ids[:positions]


def torch_text_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].double().numpy()


def tokenizer_row(llm: Any, tokenizer: Any) -> dict[str, Any]:
    mismatches = []
    for text in (*TOKENIZER_SAMPLES, PARITY_TEXT):
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        if ours != theirs:
            mismatches.append(text[:40])
    count = len(TOKENIZER_SAMPLES) + 1
    return {"check": "tokenizer", "samples": count, "mismatches": mismatches,
            "passed": not mismatches}  # fmt: skip


def logits_row(torch_logits: np.ndarray, cpp_logits: np.ndarray, quant: str, file: str) -> dict:
    """Compare two [positions, vocab] logit arrays against the type's bounds."""
    return logit_parity("logits", torch_logits, cpp_logits, GGUF_TYPES[quant], file, "llama.cpp")


def generate_row(llm: Any, tokenizer: Any, n: int = 8) -> dict[str, Any]:
    llm.reset()
    prompt = "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n<|im_start|>assistant\n"
    out = llm(prompt, max_tokens=n, temperature=0.0, top_k=1)
    count = out["usage"]["completion_tokens"]
    return {"check": "generate", "tokens": count, "text": out["choices"][0]["text"],
            "passed": count > 0}  # fmt: skip


# ---- vision through libmtmd
def verify_vision(
    text_gguf: str | Path,
    mmproj: str | Path,
    image_size: int,
    threads: int = 0,
    settings: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Encode two different images with libmtmd into the same prompt; the logits must differ."""
    noise = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), np.uint8)
    images = [noise, np.full_like(noise, 250)]
    with llama_model(text_gguf, threads=threads) as llm, _quiet():
        try:
            with mtmd_context(llm, mmproj, settings or {}) as ctx:
                results = [mtmd_logits(ctx, llm, _png(image)) for image in images]
        except RuntimeError as exc:
            return [{"check": "vision", "passed": False, "error": str(exc)}]
    diff = float(np.abs(results[0][0][-1] - results[1][0][-1]).max())
    image_tokens = results[0][1]
    return [{
        "check": "vision", "file": Path(mmproj).name, "image_tokens": image_tokens,
        "logit_change": float(f"{diff:.3g}"), "min_change": VISION_MIN_DIFF,
        "passed": image_tokens > 0 and diff > VISION_MIN_DIFF,
    }]  # fmt: skip


def verify_image_logits(
    loaded: Any, text_gguf: str | Path, mmproj: str | Path, quant: str, threads: int = 0
) -> dict[str, Any]:
    """Image + prompt end to end: the next-token logits of the text after the image, PyTorch (HF
    processor) vs llama.cpp + libmtmd (its own preprocessing, M-RoPE positions for Qwen-VL), on
    an image both sides keep at its size; bounds of the text type (`quantize.GGUF_TYPES`)."""
    import torch
    from PIL import Image

    from export.gguf.mmproj import mmproj_spec

    side, settings = mmproj_spec(loaded.model).parity_image(loaded.model, loaded.processor)
    image = np.random.default_rng(2).integers(0, 256, (side, side, 3), np.uint8)
    text = VISION_PROMPT.format(marker=loaded.arch.image_text)
    inputs = loaded.processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        ref = loaded.model(**inputs).logits[0].double().numpy()
    with (
        llama_model(text_gguf, threads=threads) as llm,
        _quiet(),
        mtmd_context(llm, mmproj, settings) as ctx,
    ):
        got, _ = mtmd_logits(ctx, llm, _png(image))
    tail = len(got)  # the text after the image: its positions depend on the image
    row = logits_row(ref[-tail:], got, quant, Path(text_gguf).name)
    return {**row, "check": "image_logits", "mmproj": Path(mmproj).name, "image": f"{side}x{side}"}


@contextlib.contextmanager
def mtmd_context(llm: Any, mmproj: str | Path, settings: dict[str, int]) -> Iterator[Any]:
    """A libmtmd context for `llm` (CPU, no warmup); `settings`: mtmd_context_params fields such
    as image_min_tokens / image_max_tokens."""
    from llama_cpp import mtmd_cpp

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu, params.print_timings, params.warmup = False, False, False
    for key, value in settings.items():
        setattr(params, key, value)
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
    if not ctx:
        raise RuntimeError(f"libmtmd could not load {Path(mmproj).name}")
    try:
        yield ctx
    finally:
        mtmd_cpp.mtmd_free(ctx)


def _quiet():
    """libmtmd logs every image it encodes to stderr; keep stderr for our own messages."""
    from llama_cpp._utils import suppress_stdout_stderr

    return suppress_stdout_stderr(disable=False)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def mtmd_logits(ctx: Any, llm: Any, image: bytes) -> tuple[np.ndarray, int]:
    """Run VISION_PROMPT with one image through libmtmd; (logits of the last text chunk's
    positions [tokens, vocab], image tokens)."""
    import llama_cpp
    from llama_cpp import mtmd_cpp

    buf = (ctypes.c_uint8 * len(image)).from_buffer(bytearray(image))
    bitmap = mtmd_cpp.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(image), False)
    text = VISION_PROMPT.format(marker=mtmd_cpp.mtmd_default_marker().decode()).encode()
    inp = mtmd_cpp.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    image_tokens = 0
    try:
        bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), bitmaps, 1) != 0:
            raise RuntimeError("libmtmd could not tokenize the image prompt")
        llm.reset()
        llm._ctx.kv_cache_clear()
        start = 0
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                ptr = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                start = llm.n_tokens
                llm.eval([ptr[j] for j in range(count.value)])
                continue
            image_tokens += mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
            n_past = llama_cpp.llama_pos(0)
            status = mtmd_cpp.mtmd_helper_eval_chunk_single(
                ctx, llm._ctx.ctx, chunk, llama_cpp.llama_pos(llm.n_tokens),
                llama_cpp.llama_seq_id(0), llm.n_batch, False, ctypes.byref(n_past),
            )  # fmt: skip
            if status != 0:
                raise RuntimeError(f"libmtmd could not evaluate the image (status {status})")
            # the next position, which M-RoPE images advance by max(grid h, w), not by tokens
            llm.n_tokens = n_past.value
        return np.array(llm.scores[start : llm.n_tokens], dtype=np.float64), image_tokens
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)


def verify_image_embeddings(
    loaded: Any, text_gguf: str | Path, mmproj: str | Path, mmproj_quant: str, threads: int = 0
) -> dict[str, Any]:
    """libmtmd's embeddings of one noise image vs PyTorch's, on the same pixels."""
    from PIL import Image

    from export.gguf.mmproj import mmproj_spec

    spec = mmproj_spec(loaded.model)
    side, settings = spec.parity_image(loaded.model, loaded.processor)
    image = np.random.default_rng(1).integers(0, 256, (side, side, 3), np.uint8)
    ref = spec.reference_embeddings(loaded.model, loaded.processor, Image.fromarray(image))
    with llama_model(text_gguf, threads=threads) as llm, _quiet():
        chunks = mtmd_image_embeddings(llm, mmproj, image, settings)
    got = chunks[-1]
    rel_bound, cos_bound = IMAGE_EMBEDDING_BOUNDS[mmproj_quant]
    row: dict[str, Any] = {
        "check": "image_embeddings", "file": Path(mmproj).name, "type": mmproj_quant,
        "image": f"{side}x{side}", "mtmd_image_tokens": sum(len(c) for c in chunks),
        "mtmd_images": len(chunks), "torch_tokens_compared": int(ref.shape[0]),
        "bounds": {"rel_max_abs": rel_bound, "min_cosine": cos_bound},
    }  # fmt: skip
    if got.shape != ref.shape:
        failure = f"shape {got.shape} != torch {ref.shape}"
        return {**row, "failures": [failure], "passed": False}
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    cosine = float(np.min(np.sum(got * ref, -1) / (
        np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)))  # fmt: skip
    failures = [f"rel max abs {rel:.2e} > {rel_bound:.0e}"] if not rel <= rel_bound else []
    if not cosine >= cos_bound:
        failures.append(f"min cosine {cosine:.5f} < {cos_bound}")
    return {**row, "max_abs": float(f"{np.abs(got - ref).max():.3g}"),
            "rel_max_abs": float(f"{rel:.3g}"), "min_cosine": round(cosine, 6),
            "failures": failures, "passed": not failures}  # fmt: skip


def mtmd_image_embeddings(
    llm: Any, mmproj: str | Path, image: np.ndarray, settings: dict[str, int]
) -> list[np.ndarray]:
    """Encode one RGB image with libmtmd; the [tokens, dim] embeddings of each image chunk (tiles
    and overview, in prompt order)."""
    with mtmd_context(llm, mmproj, settings) as ctx:
        return _encode_chunks(ctx, llm, image)


def _encode_chunks(ctx: Any, llm: Any, image: np.ndarray) -> list[np.ndarray]:
    from llama_cpp import mtmd_cpp

    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    data = pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte))
    bitmap = mtmd_cpp.mtmd_bitmap_init(pixels.shape[1], pixels.shape[0], data)
    text = mtmd_cpp.mtmd_default_marker()
    inp = mtmd_cpp.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), bitmaps, 1) != 0:
            raise RuntimeError("libmtmd could not tokenize the image")
        out = []
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                continue
            if mtmd_cpp.mtmd_encode_chunk(ctx, chunk) != 0:
                raise RuntimeError("libmtmd could not encode the image")
            n = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
            embd = mtmd_cpp.mtmd_get_output_embd(ctx)
            out.append(np.ctypeslib.as_array(embd, shape=(n * llm.n_embd(),)).reshape(n, -1).copy())
        return out
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
