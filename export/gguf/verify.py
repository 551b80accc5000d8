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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import CasseatError
from casseat_edge.formats.mtmd import LlamaSession
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


# ---- vision, through our libmtmd driver (the runtime's `LlamaSession`)
@contextlib.contextmanager
def mtmd_session(
    text_gguf: str | Path,
    mmproj: str | Path,
    threads: int = 0,
    settings: dict[str, int] | None = None,
) -> Iterator[LlamaSession]:
    """The runtime's llama.cpp + libmtmd session on an export, closed on exit; `settings`:
    libmtmd context fields such as image_min_tokens / image_max_tokens."""
    session = LlamaSession(
        text_gguf, mmproj, n_ctx=1024, threads=threads or None, mmproj_settings=settings
    )
    try:
        yield session
    finally:
        session.close()


def image_prompt_logits(
    session: LlamaSession, image: np.ndarray, all_logits: bool = False
) -> tuple[np.ndarray, int]:
    """VISION_PROMPT with one RGB image, from an empty cache: the last position's logits (or with
    `all_logits` those of every text position after the image) and the image's token count."""
    from PIL import Image

    text = VISION_PROMPT.format(marker=session.marker)
    prompt = session.tokenize_prompt(text, [Image.fromarray(image)])
    session.truncate(0)
    logits = session.eval(prompt.ids, 0, prompt.images, all_logits=all_logits)
    return logits.astype(np.float64), sum(span.n_tokens for span in prompt.images)


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
    try:
        with mtmd_session(text_gguf, mmproj, threads, settings) as session:
            results = [image_prompt_logits(session, image) for image in images]
    except CasseatError as exc:
        return [{"check": "vision", "passed": False, "error": str(exc)}]
    diff = float(np.abs(results[0][0] - results[1][0]).max())
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
    with mtmd_session(text_gguf, mmproj, threads, settings) as session:
        got, _ = image_prompt_logits(session, image, all_logits=True)
    tail = len(got)  # the text after the image: its positions depend on the image
    row = logits_row(ref[-tail:], got, quant, Path(text_gguf).name)
    return {**row, "check": "image_logits", "mmproj": Path(mmproj).name, "image": f"{side}x{side}"}


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
    with mtmd_session(text_gguf, mmproj, threads, settings) as session:
        prompt = session.tokenize_prompt(session.marker, [Image.fromarray(image)])
        chunks = session.image_embeddings(prompt)
    got = chunks[-1].astype(np.float64)
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
