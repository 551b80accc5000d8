"""bitsandbytes int8/nf4 checkpoints for the torch path and quantizer helpers shared by the exporters. Built by issue 5; registers quantization types in casseat_edge.registry.QUANT and the `bnb` exporter in EXPORTERS.

`casseat-edge quantize --model DIR --method bnb-int8|bnb-nf4 --out DIR` loads the source in
float32, quantizes its linear layers with bitsandbytes (8-bit `Linear8bitLt` or 4-bit NF4
`Linear4bit`; vision tower, connector and `lm_head` stay float), saves a safetensors checkpoint
that `casseat_edge.models.load_model(out)` reloads (transformers reads `quantization_config` from
config.json), and records sizes, bits per weight and next-token parity against the source.

    from quantize import QuantizeConfig, quantize
    summary = quantize(QuantizeConfig(model="tiny:llama", method="bnb-nf4", out="q"))
"""

from __future__ import annotations

from typing import Any

from quantize.bnb import BNB_METHODS, quantize_bnb
from quantize.config import QuantizeConfig

__all__ = ["BNB_METHODS", "QuantizeConfig", "quantize"]


def quantize(config: QuantizeConfig) -> dict[str, Any]:
    """Write the quantized checkpoint of `config.model` to `config.out` and return its summary.
    Raises `ParityError` (after writing) when parity with the source is outside tolerance."""
    return quantize_bnb(config)
