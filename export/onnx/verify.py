"""Verification of a split ONNX export against the PyTorch model it came from (on by default).

Every variant is loaded in onnxruntime through `casseat_edge.formats.onnx_split.SplitOnnxModel` (the
runner the onnxruntime backend serves with) and compared on the same token ids. transformers.js
loading the same files and generating the same tokens is tested in tests/test_transformersjs.py. Rows, each with
`passed`, bounds from `quantize.ONNX_TYPES`:
- `logits`: one prefill over `positions` tokens of real text (the GGUF verifier's PARITY_TEXT):
  top-1 agreement, mean KL(torch || ORT), max |diff| relative to the largest torch logit;
- `kv_cache`: the same text prefilled up to 16 tokens before the end, then one token per call
  through past_key_values: the per-step logits against PyTorch's;
- `vision` (VLMs): the vision encoder's features for one image vs PyTorch's `get_image_features`
  (cosine, relative max |diff|);
- `image_logits` (VLMs): a whole conversation about an image (vision encoder, embeddings with
  image features scattered in, decoder with the family's position ids) vs the PyTorch model's
  logits at the 100+ positions after the image, as the quantized bounds were measured (on a bare
  24-token image prompt one position is 4 points of top-1).

    rows = verify_variant(loaded, "export-onnx", "int4", positions=200)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.formats.onnx_split import VISION, SplitOnnxModel
from casseat_edge.parity import logit_parity
from casseat_edge.preprocess import encode, user_messages
from casseat_edge.prompts import assistant
from export.gguf.verify import parity_ids, torch_text_logits
from export.onnx.quantize import ONNX_TYPES, OnnxQuantType

STEPPED = 16  # positions verified one token per call through the KV cache


def verify_variant(
    loaded: Any, out: Path, quant: str, positions: int = 200, threads: int = 0
) -> list[dict[str, Any]]:
    entry = ONNX_TYPES[quant]
    model = SplitOnnxModel(out, quant, threads=threads)
    file = Path(model.files[model.main]).name
    ids = parity_ids(loaded.tokenizer, positions)
    ref = torch_text_logits(loaded.model, ids)
    logits, _ = model.forward(ids, 0, None)
    rows = [compare_logits("logits", ref, logits, entry, file)]
    split = len(ids) - STEPPED
    last, past = model.forward(ids[:split], 0, None)
    stepped = [last[-1]]
    for j in range(split, len(ids)):
        step, past = model.forward(ids[: j + 1], j, past)
        stepped.append(step[-1])
    rows.append(compare_logits("kv_cache", ref[split - 1 :], np.stack(stepped), entry, file))
    if loaded.arch.vision:
        rows += verify_image(loaded, model, entry)
    return rows


def compare_logits(
    check: str, ref: np.ndarray, got: np.ndarray, entry: OnnxQuantType, file: str
) -> dict[str, Any]:
    return logit_parity(check, ref, got, entry, file, "onnxruntime")


def parity_image() -> Any:
    """A deterministic 80x60 image: a colour gradient with noise (not the traced size)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:60, 0:80]
    base = np.stack([x * 3, y * 4, (x + y) * 2], -1) + rng.integers(0, 40, (60, 80, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


# our own image conversation: a question and a worked reply, 100+ tokens after the image
IMAGE_QUESTION = (
    "What number is shown in the picture? A bar chart shows apples 14, pears 9 and plums 21. "
    "How many fruits are there in total, and which bar is the tallest?"
)
IMAGE_REPLY = (
    "Adding the three bars gives 14 + 9 + 21 = 44 fruits. The tallest bar belongs to the plums, "
    "with 21, which is more than the apples by 7 and more than the pears by 12. Checking the "
    "work again, every sum matches the chart, so the answer stands.\nFinal answer: 44; plums."
)


def verify_image(loaded: Any, model: SplitOnnxModel, entry: OnnxQuantType) -> list[dict]:
    import torch

    messages = [*user_messages(IMAGE_QUESTION), assistant(IMAGE_REPLY)]
    inputs = encode(loaded.processor, loaded.arch, messages, parity_image(), None, False)
    pixels = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref_features = loaded.model.model.get_image_features(**pixels)
        ref_logits = loaded.model(**inputs).logits[0].double().numpy()
    if isinstance(ref_features, (tuple, list)):
        ref_features = torch.cat(list(ref_features))
    ref_f = ref_features.reshape(-1, ref_features.shape[-1]).double().numpy()
    extra = {k: v.numpy() for k, v in pixels.items()}
    got_f = model.image_features(extra).astype(np.float64)
    ids = inputs["input_ids"][0].tolist()
    logits, _ = model.forward(ids, 0, None, extra)
    file = Path(model.files[VISION]).name
    rows = [_feature_row(ref_f, got_f, entry, file)]
    start = _after_image(ids, getattr(loaded.model.config, "image_token_id", None))
    rows.append(compare_logits("image_logits", ref_logits[start:], logits[start:], entry, file))
    return rows


def _after_image(ids: list[int], image_token_id: int | None) -> int:
    """The first position after the image's placeholder tokens. The logits inside the image
    block predict placeholders that are given, never generated (measured: a trained student's
    int8 export differs there by KL 9 at one position while the text after the image, which
    does depend on the image, stays at KL 0.008), so the comparison starts after them."""
    if image_token_id is None or image_token_id not in ids:
        return 0
    return len(ids) - ids[::-1].index(image_token_id)


def _feature_row(ref: np.ndarray, got: np.ndarray, entry: OnnxQuantType, file: str) -> dict:
    if ref.shape != got.shape:
        return {"check": "vision", "file": file, "type": entry.name, "passed": False,
                "failures": [f"features {got.shape} != torch {ref.shape}"]}  # fmt: skip
    cos = float(np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-12))
    rel = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-6))
    failures = []
    if not cos >= entry.feature_cos:
        failures.append(f"cosine {cos:.5f} < {entry.feature_cos}")
    if entry.max_abs is not None and not rel <= entry.max_abs:
        failures.append(f"rel max abs {rel:.2e} > {entry.max_abs:.0e}")
    return {
        "check": "vision", "file": file, "type": entry.name, "image_tokens": int(ref.shape[0]),
        "cosine": round(cos, 6), "rel_max_abs": float(f"{rel:.3g}"), "bounds": entry.bounds(),
        "failures": failures, "passed": not failures,
    }  # fmt: skip
