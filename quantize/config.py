"""`QuantizeConfig`: every knob of `casseat-edge quantize`, with its help text.

config = load_config(QuantizeConfig, overrides={"model": "tiny:llama", "method": "bnb-nf4"})
quantize(config)
"""

from __future__ import annotations

import dataclasses

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError
from casseat_edge.models import DEFAULT_MODEL

METHODS = ("bnb-int8", "bnb-nf4")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(StageConfig):
    """Config of the quantize stage (bitsandbytes checkpoints for the torch backend)."""

    model: str = option(
        DEFAULT_MODEL, "source model spec (HF directory, tiny:<arch>, embedded:...)"
    )
    method: str = option("bnb-int8", "quantization method: " + "|".join(METHODS))
    out: str = option("quantized", "output directory (safetensors checkpoint + casseat.json)")
    overwrite: bool = option(False, "replace an existing quantized model directory --out")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"method={self.method!r} is not one of: {', '.join(METHODS)}; "
                "GGUF/ONNX quant types go through `casseat-edge export`"
            )
