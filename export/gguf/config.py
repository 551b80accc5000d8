"""`GgufExportConfig`: every knob of `casseat-edge export --format gguf`, with its help text.

config = load_config(GgufExportConfig, overrides={"model": "tiny:smolvlm", "out": "gguf"})
export_gguf(config)
"""

from __future__ import annotations

import dataclasses

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError
from casseat_edge.models import DEFAULT_MODEL

TEXT_QUANTS = (
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0",
    "q4_k_m", "q4_k_s", "q4_1", "q4_0", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k",
)  # fmt: skip
MMPROJ_QUANTS = ("f32", "f16", "q8_0")
FLOAT_QUANTS = ("f32", "f16", "bf16")


@dataclasses.dataclass(frozen=True)
class GgufExportConfig(StageConfig):
    """Config of the GGUF export stage (text model + mmproj for vision models)."""

    model: str = option(
        DEFAULT_MODEL, "source model spec (HF directory, tiny:<arch>, embedded:...)"
    )
    out: str = option(
        "export-gguf", "output directory (model-<quant>.gguf, mmproj-*.gguf, casseat.json)"
    )
    quant: str = option("f16", "text model type: " + "|".join(TEXT_QUANTS))
    mmproj_quant: str = option("f16", "mmproj (vision) type: " + "|".join(MMPROJ_QUANTS))
    verify: bool = option(True, "compare llama.cpp against the PyTorch model after writing")
    overwrite: bool = option(False, "replace an existing export directory --out")
    positions: int = option(200, "token positions compared in logit verification")
    threads: int = option(0, "CPU threads for llama.cpp (0: its default)")
    imatrix: str = option(
        "",
        "importance matrix for the quantizer (quantized --quant types): an imatrix .gguf "
        "(llama-imatrix's, or imatrix.gguf of an earlier export), or a `casseat-edge synth` "
        "directory to compute one from with the PyTorch model (saved as --out/imatrix.gguf)",
    )
    gptq: str = option(
        "",
        "a `casseat-edge synth` directory: re-round the q5_0/q4_0 tensors llama.cpp made (q4_k_m "
        "of 576-wide models: most of them) with GPTQ from its samples' input covariances; the "
        "file keeps llama.cpp's types and size",
    )
    calibration_samples: int = option(
        64, "samples of a synth directory --imatrix / --gptq calibrate on (0: all)"
    )

    def __post_init__(self) -> None:
        problems = []
        if self.quant not in TEXT_QUANTS:
            problems.append(f"quant={self.quant!r} is not one of: {', '.join(TEXT_QUANTS)}")
        if self.mmproj_quant not in MMPROJ_QUANTS:
            problems.append(
                f"mmproj_quant={self.mmproj_quant!r} is not one of: {', '.join(MMPROJ_QUANTS)}"
            )
        for name in ("imatrix", "gptq"):
            if getattr(self, name) and self.quant in FLOAT_QUANTS:
                problems.append(
                    f"{name}: applies only to quantized types, not quant={self.quant!r}; drop "
                    f"--{name} or pick a quantized --quant (q4_k_m...)"
                )
        if self.calibration_samples < 0:
            problems.append(f"calibration_samples={self.calibration_samples} must be >= 0")
        if self.positions < 8:
            problems.append(f"positions={self.positions} must be at least 8")
        if problems:
            raise ConfigError("; ".join(problems))
