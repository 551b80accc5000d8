"""Our ONNX exports in a real client: transformers.js (@huggingface/transformers in Node, pinned by
tests/js/package-lock.json) loads the export directory offline and generates the same greedy tokens
as our onnxruntime backend.

The tiny models' seeded init (std 0.02) makes every greedy token the same ("\\n"), which would let
a broken client pass; the test exports copies with wider weights (std 0.2, seeded, saved as
safetensors), whose greedy tokens vary. For each model and variant, tests/js/generate.mjs receives
the conversation, our prompt ids (and, for Idefics3, our pixel tensors) and answers with its own
chat-template ids and the greedy tokens from our inputs and from its own preprocessing (for
Idefics3 its own prompt lacks libmtmd's 1x1 tile, which our students are trained with, so there
the difference is pinned to exactly that block and the tokens are compared on our inputs). Needs node
and `npm ci --prefix tests/js` (scripts/setup.sh runs it); skipped with that reason otherwise.
~10 s per export, ~3 s per client run; the real SmolLM2 case is slow (~100 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from casseat_edge.config import load_config
from casseat_edge.preprocess import to_text_only, user_messages
from export.onnx.verify import parity_image
from tests.conftest import has_module

JS_DIR = Path(__file__).parent / "js"
PACKAGE = JS_DIR / "node_modules" / "@huggingface" / "transformers" / "package.json"
NEW_TOKENS = 12
QUESTION = "A rectangle is 3 by 4. What is its area? Think step by step."
CASES = [("tiny:llama", "fp32"), ("tiny:llama", "int8"), ("tiny:llama", "int4"),
         ("tiny:smolvlm", "fp32"), ("tiny:smolvlm", "int8"), ("tiny:smolvlm", "int4")]  # fmt: skip

pytestmark = [
    pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime"),
    pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Node.js 18+) on PATH"),
    pytest.mark.skipif(
        not PACKAGE.is_file(),
        reason="needs @huggingface/transformers in tests/js: run `npm ci --prefix tests/js`",
    ),
]


def spread_copy(spec: str, out: Path) -> Path:
    """An HF directory of `spec` with its matrices redrawn at std 0.2 (seeded)."""
    import torch

    from casseat_edge.models import load_model, resolve_model

    ref = resolve_model(spec)
    out.mkdir(parents=True)
    for item in ref.path.iterdir():
        if item.name not in ("model.safetensors", "casseat.json"):
            shutil.copy(item, out / item.name)
    model = load_model(ref).model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() >= 2:
                weight.normal_(0.0, 0.2, generator=generator)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unverified exports (the exporter's tests verify them) with the variants the cases use."""
    from export.onnx import OnnxExportConfig, export_onnx

    root, out = tmp_path_factory.mktemp("tjs"), {}
    for model in dict(CASES):
        source = spread_copy(model, root / f"{model[5:]}-hf")
        quant = tuple(q for m, q in CASES if m == model)
        values = {"model": str(source), "out": str(root / model[5:]), "quant": quant,
                  "verify": False}  # fmt: skip
        export_onnx(load_config(OnnxExportConfig, overrides=values))
        out[model] = root / model[5:]
    return out


def ours(engine: Any, messages: list[dict], image: Any) -> tuple[Any, list[int]]:
    """Our backend: the encoded prompt and its greedy tokens (stopping where the backend stops)."""
    encoded = engine.encode(messages, image, None)
    logits = engine.prefill(encoded.ids, 0, encoded.extra)
    tokens: list[int] = []
    while len(tokens) < NEW_TOKENS:
        tokens.append(int(np.argmax(logits)))
        if tokens[-1] in engine._stops:
            break
        logits = engine.step(tokens[-1], len(encoded.ids) + len(tokens) - 1)
    return encoded, tokens


def run_client(request: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    done = subprocess.run(["node", str(JS_DIR / "generate.mjs"), str(path)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def raw(array: np.ndarray, path: Path, dtype: Any) -> dict[str, Any]:
    np.ascontiguousarray(array, dtype=dtype).tofile(path)
    return {"file": str(path), "dims": list(array.shape)}


@pytest.mark.parametrize(("model", "quant"), CASES)
def test_transformersjs_generates_our_backends_tokens(model, quant, exports, tmp_path) -> None:
    assert_same_generation(exports[model], quant, tmp_path)


@pytest.mark.slow
def test_smollm2_int4_in_transformersjs(tmp_path) -> None:
    """The real packaged SmolLM2 (~60 s export): its int4 merged graph in transformers.js."""
    from export.onnx import OnnxExportConfig, export_onnx

    values = {"model": "embedded:smollm2-135m-instruct", "out": str(tmp_path / "smollm2"),
              "quant": ("int4",), "verify": False}  # fmt: skip
    export_onnx(load_config(OnnxExportConfig, overrides=values))
    assert_same_generation(tmp_path / "smollm2", "int4", tmp_path)


def assert_same_generation(export_dir: Path, quant: str, tmp_path: Path) -> None:
    """transformers.js' chat-template ids, greedy tokens from our inputs and from its own
    preprocessing all equal our backend's."""
    from casseat_edge.artifacts import read_manifest
    from runtime.backends.onnxruntime_backend import OrtEngine

    engine = OrtEngine(export_dir, quant)
    vision = engine.vision
    messages = user_messages(QUESTION, with_image=vision)
    image = frame_image(engine) if vision else None
    encoded, expected = ours(engine, messages, image)
    dtype = read_manifest(export_dir, kind="export")["onnx"]["transformers_js_dtype"][quant]
    request: dict[str, Any] = {
        "model_dir": str(export_dir), "dtype": dtype, "input_ids": encoded.ids,
        "messages": messages if vision else to_text_only(messages, None),
        "max_new_tokens": NEW_TOKENS, "image": None,
    }  # fmt: skip
    if vision:
        image.save(tmp_path / "image.png")
        request["image"] = str(tmp_path / "image.png")
        request["pixel_values"] = raw(encoded.extra["pixel_values"], tmp_path / "pv", np.float32)
        mask = encoded.extra["pixel_attention_mask"]
        request["pixel_attention_mask"] = raw(mask, tmp_path / "pm", np.uint8)
    got = run_client(request, tmp_path)
    assert len(expected) == NEW_TOKENS or expected[-1] in engine._stops
    assert len(set(expected)) > NEW_TOKENS // 2, expected  # not one repeated token
    assert got["from_ours"] == expected
    if not vision:
        assert got["template_ids"] == encoded.ids, got["template_text"]
        assert got["from_own"] == expected
        return
    # Its own Idefics3 processor, like HF's, gives an image that fits one tile no grid: the global
    # image only. Our students use libmtmd's layout, which every llama.cpp client uses: a 1x1 grid
    # (the tile, its markup, then the global image), image_seq_len + 3 ids more. Apart from that
    # block its prompt is ours, and its global frame has our pixels exactly (a frame that needs
    # no resize).
    tile = engine.processor.image_seq_len + 3
    assert len(encoded.ids) - len(got["template_ids"]) == tile
    start = encoded.ids.index(engine.processor.tokenizer.convert_tokens_to_ids("<row_1_col_1>")) - 1
    assert encoded.ids[:start] + encoded.ids[start + tile :] == got["template_ids"]
    theirs = np.array(got["pixel_values"], np.float32).reshape(got["pixel_values_dims"])
    assert theirs.shape[1] == 1 and encoded.extra["pixel_values"].shape[1] == 2
    assert np.abs(theirs[:, -1] - encoded.extra["pixel_values"][:, -1]).max() < 1e-6


def frame_image(engine: Any) -> Any:
    """The parity image at the processor's frame size. transformers.js resizes with sharp, not
    PIL (measured on the 80x60 parity image: mean |pixel diff| 0.01, max 0.06, enough to change
    the 10th greedy token of the tiny model), so its own pipeline is compared on a frame that
    neither resizes; the export itself is compared on our pixels above."""
    side = engine.processor.image_processor.max_image_size["longest_edge"]
    return parity_image().resize((side, side))
