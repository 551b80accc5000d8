"""The ONNX export layout (as onnx-community publishes models for transformers.js) and one runner.

An ONNX export directory is an HF `from_pretrained` directory (`config.json`,
`generation_config.json`, tokenizer files with the `chat_template` in `tokenizer_config.json`,
`preprocessor_config.json` / `processor_config.json` for VLMs) plus `casseat.json` (format "onnx",
with an `onnx` section: the architecture, layer/head sizes, image token ids, the files of each
variant and the transformers.js `dtype` that loads it) and, under `onnx/`:

- text-only models, one merged graph, `model[_int8|_q4].onnx`: input_ids, attention_mask,
  position_ids, past_key_values.N.key/value ([batch, kv_heads, past, head_dim]; past 0 on the
  first call) -> logits, present.N.key/value;
- VLMs, three graphs:
  `vision_encoder[_int8].onnx`: pixel_values [batch, images, 3, H, W] and pixel_attention_mask
  [batch, images, H, W] (bool) for Idefics3 (all-zero padding images are dropped in the graph),
  patches + rotary ids + attention bias for Qwen2-VL -> image_features, one row per image token;
  `embed_tokens[_int8].onnx`: input_ids -> inputs_embeds;
  `decoder_model_merged[_int8|_q4].onnx`: the merged graph's inputs with inputs_embeds instead of
  input_ids (position_ids [3, batch, seq] for Qwen2-VL's M-RoPE).

The suffixes are transformers.js' dtype suffixes (`int8` -> `_int8`, `q4` -> `_q4`); the int8
and int4 variants share the `_int8` vision encoder and embeddings (`TRANSFORMERS_JS_DTYPE`).

`SplitOnnxModel` drives the sessions; both the exporter's verification and the onnxruntime
backend use it, so the code that is verified is the code that serves. Qwen2-VL's position ids are
computed here exactly as transformers' `get_rope_index` does (numpy), and its vision encoder takes
the patch (row, column) ids and the per-image attention bias that transformers derives from the
grid in Python (data-dependent, so not traceable into the graph).

    model = SplitOnnxModel("export-onnx", quant="int4")
    logits, past = model.forward(ids, start=0, past=None, extra=pixel_inputs)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.artifacts import read_manifest
from casseat_edge.errors import BackendUnavailableError, CasseatError, ModelSpecError

ONNX_SUBDIR = "onnx"
VISION, EMBED, DECODER = "vision_encoder", "embed_tokens", "decoder_model_merged"
MODEL = "model"  # text-only models: embeddings + decoder in one graph, input_ids in
DECODERS = (DECODER, MODEL)  # the parts quantized per variant; the others are fp32 or int8
# our variant -> transformers.js dtype of a decoder part, whose suffix names the file
TRANSFORMERS_JS_DTYPE = {"fp32": "fp32", "int8": "int8", "int4": "q4"}
SUFFIX = {"fp32": "", "int8": "_int8", "q4": "_q4"}
ONNX_EXTRA = "pip install 'onnxruntime>=1.20,<1.33' (a core dependency of casseat-edge)"
GPU_EXTRA = "pip install 'casseat-edge[gpu]' (onnxruntime-gpu)"


def part_dtype(part: str, quant: str) -> str:
    """The transformers.js dtype of `part` in variant `quant`: the decoder's follows the
    variant, the vision encoder and embeddings are int8 in both quantized variants."""
    if part in DECODERS:
        return TRANSFORMERS_JS_DTYPE[quant]
    return "fp32" if quant == "fp32" else "int8"


def part_file(part: str, quant: str) -> str:
    """`onnx/<part><suffix>.onnx`, the name transformers.js loads for `part_dtype`."""
    return f"{ONNX_SUBDIR}/{part}{SUFFIX[part_dtype(part, quant)]}.onnx"


def parts_for(vision: bool) -> list[str]:
    return [VISION, EMBED, DECODER] if vision else [MODEL]


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(f"onnxruntime is not installed; {ONNX_EXTRA}") from None
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """CPU EP, or CUDA EP (with CPU for the ops it lacks) when asked for and installed."""
    ort = import_onnxruntime()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"device=cuda needs onnxruntime's CUDAExecutionProvider, not available here; {GPU_EXTRA}"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ModelSpecError(f"device={device!r}: expected cpu or cuda")


# ---- Qwen2-VL: M-RoPE positions and vision-encoder inputs, as transformers computes them
def mrope_positions(
    ids: list[int], grid_thw: np.ndarray | None, info: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """[3, len(ids)] positions (temporal, height, width) and the text-position delta after them."""
    merge = int(info["spatial_merge_size"])
    image_id, start_id = info["image_token_id"], info["vision_start_token_id"]
    grids = [] if grid_thw is None else [tuple(int(v) for v in g) for g in grid_thw]
    n_images = sum(1 for i, t in enumerate(ids[:-1]) if t == start_id and ids[i + 1] == image_id)
    pieces: list[np.ndarray] = []
    st = 0
    for index in range(n_images):
        ed = ids.index(image_id, st)
        t, h, w = grids[index][0], grids[index][1] // merge, grids[index][2] // merge
        st_idx = pieces[-1].max() + 1 if pieces else 0
        pieces.append(np.broadcast_to(np.arange(ed - st), (3, ed - st)) + st_idx)
        grid = np.stack(
            [
                np.repeat(np.arange(t), h * w),
                np.tile(np.repeat(np.arange(h), w), t),
                np.tile(np.arange(w), t * h),
            ]
        )
        pieces.append(grid + (ed - st) + st_idx)
        st = ed + t * h * w
    if st < len(ids):
        st_idx = pieces[-1].max() + 1 if pieces else 0
        pieces.append(np.broadcast_to(np.arange(len(ids) - st), (3, len(ids) - st)) + st_idx)
    positions = np.concatenate(pieces, axis=1).astype(np.int64)
    return positions, int(positions.max()) + 1 - len(ids)


def qwen2vl_vision_inputs(grid_thw: np.ndarray, merge: int) -> dict[str, np.ndarray]:
    """Patch (row, col) ids in the merger's 2x2 window order, and a block-diagonal attention bias:
    each frame attends only within itself (transformers splits attention at `cu_seqlens`)."""
    pos, sizes = [], []
    for t, h, w in (tuple(int(v) for v in g) for g in grid_thw):
        rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
        cols = np.broadcast_to(np.arange(w)[None, :], (h, w))
        order = [
            a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)
            for a in (rows, cols)
        ]
        pos.append(np.tile(np.stack(order, -1), (t, 1)))
        sizes += [h * w] * t
    total = sum(sizes)
    bias = np.full((total, total), np.finfo(np.float32).min, np.float32)
    edge = 0
    for size in sizes:
        bias[edge : edge + size, edge : edge + size] = 0.0
        edge += size
    return {"vision_pos_ids": np.concatenate(pos).astype(np.int64), "vision_attention_bias": bias}


class SplitOnnxModel:
    """onnxruntime sessions over one variant of a split export, with the glue between them."""

    def __init__(
        self, directory: str | Path, quant: str | None = None, threads: int = 0, device: str = "cpu"
    ) -> None:
        ort = import_onnxruntime()
        self.directory = Path(directory)
        manifest = read_manifest(self.directory, kind="export")
        if manifest.get("format") != "onnx" or "onnx" not in manifest:
            raise ModelSpecError(
                f"{directory}: a {manifest.get('format')!r} export, not ONNX; "
                "export one with: casseat-edge export --format onnx"
            )
        self.manifest, self.info = manifest, manifest["onnx"]
        variants = self.info["variants"]
        self.quant = quant or next(iter(variants))
        if self.quant not in variants:
            raise ModelSpecError(
                f"{directory}: no {self.quant!r} variant; this export has: {', '.join(variants)}"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.providers = providers_for(device)
        self.files = variants[self.quant]
        self.sessions = {
            part: ort.InferenceSession(
                str(self.directory / name), options, providers=self.providers
            )
            for part, name in self.files.items()
        }
        self.main = MODEL if MODEL in self.sessions else DECODER  # the part giving logits
        self.layers = int(self.info["num_layers"])
        self.position_rows = int(self.info["position_rows"])
        self.rope_delta = 0
        self.encode_s = 0.0  # vision-encoder time, accumulated until the caller takes it

    def nbytes(self) -> int:
        return sum((self.directory / name).stat().st_size for name in self.files.values())

    def empty_past(self) -> list[np.ndarray]:
        shape = (1, int(self.info["num_kv_heads"]), 0, int(self.info["head_dim"]))
        return [np.zeros(shape, np.float32) for _ in range(2 * self.layers)]

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.sessions[EMBED].run(None, {"input_ids": np.array([ids], np.int64)})[0]

    def image_features(self, extra: dict[str, np.ndarray]) -> np.ndarray:
        """Vision encoder on the processor's pixel inputs: [image tokens, hidden]."""
        if VISION not in self.sessions:
            raise CasseatError(f"{self.directory}: this export has no vision encoder")
        if self.position_rows == 3:
            feeds = {"pixel_values": extra["pixel_values"].astype(np.float32)}
            merge = int(self.info["spatial_merge_size"])
            feeds.update(qwen2vl_vision_inputs(extra["image_grid_thw"], merge))
        else:
            feeds = idefics3_vision_inputs(extra)
        features = self.sessions[VISION].run(None, feeds)[0]
        return features.reshape(-1, features.shape[-1])

    def forward(
        self,
        ids: list[int],
        start: int,
        past: list[np.ndarray] | None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Evaluate ids[start:] on top of `past` (which holds ids[:start]); [seq, vocab] logits
        and the new past. Image inputs are used on a prefill from 0 only."""
        feeds = {
            **self._token_inputs(ids[start:], extra if start == 0 else None),
            "attention_mask": np.ones((1, len(ids)), np.int64),
            "position_ids": self._positions(ids, start, extra),
        }
        past = past if past is not None else self.empty_past()
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = past[2 * i]
            feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
        logits, *present = self.sessions[self.main].run(None, feeds)
        return logits[0], present

    def _token_inputs(self, new: list[int], extra: dict[str, Any] | None) -> dict[str, Any]:
        """input_ids for the merged text graph; for a VLM's decoder, their embeddings with the
        image features scattered into the image-token rows (as transformers.js merges them)."""
        if self.main == MODEL:
            return {"input_ids": np.array([new], np.int64)}
        embeds = self.embed(new)
        if extra and VISION in self.sessions:
            mask = np.array(new) == self.info.get("image_token_id")
            t0 = time.perf_counter()
            features = self.image_features(extra)
            self.encode_s += time.perf_counter() - t0
            if int(mask.sum()) != features.shape[0]:
                raise CasseatError(
                    f"the prompt has {int(mask.sum())} image tokens but the vision encoder gave "
                    f"{features.shape[0]} features; the processor and export disagree"
                )
            embeds[0, mask] = features
        return {"inputs_embeds": embeds}

    def _positions(self, ids: list[int], start: int, extra: dict[str, Any] | None) -> np.ndarray:
        if self.position_rows == 1:
            return np.arange(start, len(ids), dtype=np.int64)[None]
        if start == 0:
            grid = (extra or {}).get("image_grid_thw")
            positions, self.rope_delta = mrope_positions(ids, grid, self.info)
            return positions[:, None, :]
        text = np.arange(start, len(ids), dtype=np.int64) + self.rope_delta
        return np.broadcast_to(text, (3, 1, len(text))).copy()


def idefics3_vision_inputs(extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Idefics3 processor's pixel_values [batch, images, 3, H, W] and pixel_attention_mask
    [batch, images, H, W], typed as the vision encoder (and transformers.js) takes them; without
    a mask every pixel counts, as in transformers."""
    pixels = extra["pixel_values"].astype(np.float32)
    mask = extra.get("pixel_attention_mask")
    if mask is None:
        mask = np.ones((*pixels.shape[:2], *pixels.shape[-2:]), bool)
    return {"pixel_values": pixels, "pixel_attention_mask": mask.astype(bool)}
