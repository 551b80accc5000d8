"""`OnnxExportConfig`: every knob of `casseat-edge export --format onnx`, with its help text.

config = load_config(OnnxExportConfig, overrides={"model": "tiny:smolvlm", "quant": ("fp32", "int4")})
export_onnx(config)
"""

from __future__ import annotations

import dataclasses

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError
from casseat_edge.models import DEFAULT_MODEL

ONNX_QUANTS = ("fp32", "int8", "int4")


@dataclasses.dataclass(frozen=True)
class OnnxExportConfig(StageConfig):
    """Config of the ONNX export stage (transformers.js layout: onnx/model.onnx for text models,
    vision_encoder / embed_tokens / decoder_model_merged for VLMs)."""

    model: str = option(
        DEFAULT_MODEL, "source model spec (HF directory, tiny:<arch>, embedded:...)"
    )
    out: str = option(
        "export-onnx", "output directory (onnx/*.onnx, config and processor files, casseat.json)"
    )
    quant: tuple[str, ...] = option(
        ("fp32",),
        "variants, several allowed: " + "|".join(ONNX_QUANTS) + " (int4 files are named _q4)",
    )
    verify: bool = option(True, "compare onnxruntime against the PyTorch model after writing")
    overwrite: bool = option(False, "replace an existing export directory --out")
    positions: int = option(200, "token positions compared in logit verification")
    threads: int = option(0, "CPU threads for onnxruntime (0: its default)")
    opset: int = option(17, "ONNX opset of the exported graphs")
    block_size: int = option(32, "int4: weights per MatMulNBits quantization block")

    def __post_init__(self) -> None:
        problems = [
            f"quant={q!r} is not one of: {', '.join(ONNX_QUANTS)}"
            for q in self.quant
            if q not in ONNX_QUANTS
        ]
        if not self.quant:
            problems.append("quant: give at least one of " + ", ".join(ONNX_QUANTS))
        if len(set(self.quant)) != len(self.quant):
            problems.append(f"quant={','.join(self.quant)} names a variant twice")
        if self.positions < 16:
            problems.append(f"positions={self.positions} must be at least 16")
        if self.opset < 14:
            problems.append(f"opset={self.opset} must be at least 14")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            problems.append(f"block_size={self.block_size} must be a power of two >= 16")
        if problems:
            raise ConfigError("; ".join(problems))
