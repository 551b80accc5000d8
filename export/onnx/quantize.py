"""onnxruntime's quantizers for the ONNX export, and the ONNX variant table with its bounds.

- decoder (or merged text model) int8 / int4: `MatMulNBitsQuantizer` (symmetric blocks of `block_size` weights, 8 or 4
  bits) on every weight MatMul, lm_head included, with accuracy level 4 (int8 activations per
  block in the kernel: onnxruntime's fast CPU path). `quantize_dynamic` was measured for the
  int8 decoder and rejected: its per-tensor int8 activations lose SmolLM2's outlier channels
  (top-1 0.62, KL 0.54 over 200 positions, vs 0.95 / 0.004 for 8-bit MatMulNBits);
- vision encoder and embed_tokens int8: `quantize_dynamic` (MatMul / Gather), shared by the int8
  and int4 variants; the merged text model's embedding table the same way (Gather), after its
  MatMulNBits pass, so both layouts carry the same weights at the same precision.

    quantize_int8("onnx/vision_encoder.onnx", "onnx/vision_encoder_int8.onnx")
    quantize_nbits("onnx/decoder_model_merged.onnx", "onnx/decoder_model_merged_q4.onnx", 4, 32)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import sha256_file
from casseat_edge.registry import QUANT


@dataclasses.dataclass(frozen=True)
class OnnxQuantType:
    """One ONNX decoder variant and the parity bounds verification applies to it.

    `top1`: minimum top-1 agreement with PyTorch; `kl`: bound on mean KL(torch || ORT) in nats;
    `max_abs`: bound on max |logit diff| relative to max |torch logit| (fp32 only);
    `feature_cos`: minimum cosine similarity of the vision encoder's features with PyTorch's."""

    name: str
    top1: float
    kl: float
    max_abs: float | None
    feature_cos: float
    summary: str
    format: str = "onnx"

    def bounds(self) -> dict[str, Any]:
        return {"top1": self.top1, "kl": self.kl, "max_abs": self.max_abs,
                "feature_cos": self.feature_cos}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        bounds = f"top1 >= {self.top1}, KL <= {self.kl}, vision cosine >= {self.feature_cos}"
        if self.max_abs is not None:
            bounds += f", rel max |diff| <= {self.max_abs}"
        return {"format": self.format, **self.bounds(), "summary": f"{self.summary}; {bounds}"}


# fp32 is the same arithmetic as PyTorch up to operation order (measured rel diff ~1e-6 on the
# tiny models and SmolLM2). Quantized bounds: measured on the embedded SmolLM2-135M over 200
# positions of PARITY_TEXT, int8 embeddings included (top1 / KL: int8 0.935 / 5.5e-3, int4 0.67 /
# 0.36, close to llama.cpp's q8_0 and q4_0), with margin; the tiny models stay far inside them.
ONNX_TYPES = {
    t.name: t
    for t in (
        OnnxQuantType("fp32", top1=0.99, kl=1e-5, max_abs=1e-4, feature_cos=0.99999,
                      summary="ONNX fp32 split export (onnxruntime)"),
        OnnxQuantType("int8", top1=0.88, kl=0.015, max_abs=None, feature_cos=0.99,
                      summary="ONNX int8: 8-bit MatMulNBits decoder, dynamic int8 vision/embeddings"),
        OnnxQuantType("int4", top1=0.6, kl=0.5, max_abs=None, feature_cos=0.99,
                      summary="ONNX int4: 4-bit MatMulNBits decoder, dynamic int8 vision/embeddings"),
    )
}  # fmt: skip
for _name, _entry in ONNX_TYPES.items():
    QUANT.register(f"onnx-{_name}")(_entry)


@contextlib.contextmanager
def _quiet():
    """The quantizers log and print per node; keep stdout for results."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize_int8(src: Path, dst: Path, op_types: tuple[str, ...] = ("MatMul",)) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=list(op_types),
                         weight_type=QuantType.QInt8, per_channel=False)  # fmt: skip
    return dst


def quantize_nbits(src: Path, dst: Path, bits: int, block_size: int) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True,
            accuracy_level=4,
        )  # fmt: skip
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def float_params(path: Path) -> int:
    """Number of floating-point weights (initializers) of an fp32 graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    total = 0
    for init in model.graph.initializer:
        if init.data_type in floats:
            count = 1
            for dim in init.dims:
                count *= dim
            total += count
    return total


def onnx_file_info(out: Path, name: str, role: str, quant: str, params: int) -> dict[str, Any]:
    """Size (MB) and bits per weight (file bytes / the fp32 graph's weight count) of one file."""
    path = out / name
    size = path.stat().st_size
    return {
        "file": name,
        "role": role,
        "type": quant,
        "params": params,
        "size_mb": round(size / 1e6, 3),
        "bits_per_weight": round(8 * size / max(params, 1), 3),
        "sha256": sha256_file(path),
    }
