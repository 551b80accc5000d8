"""Quantization-aware LoRA training (`--qat q4_k_m`): train the model as the GGUF will run it.

A LoRA adapter is tiny next to the rounding of a 4/5-bit GGUF: on the Cas-SEAT student the merged
update W' - W averages 3-9% of a q5_0 rounding step per weight, while rounding moves every weight by
up to half a step. With `--qat FTYPE` each adapted decoder matrix computes its output from
`fake_quantize(W + BA)` (the weights llama.cpp will store once the adapter is merged and the file
quantized, `casseat_edge.formats.ggml_quant`), so the loss is the quantized model's loss; the
gradient reaches A and B as if the rounding were not there (the straight-through estimator):

    out = x @ (Q(W + BA) - BA)^T  +  x @ (BA)^T          # forward value: x @ Q(W + BA)^T

The first term is a constant of the step (recomputed when an optimizer step has changed A or B), the
second is peft's own LoRA path, so no full weight gradient is ever formed. Frozen matrices
without an adapter (the tied embedding / lm_head) are rounded once, in place, for the run. The
saved model is the plain merged W + BA (`detach` restores everything first); llama.cpp's rounding
of it is the one training saw, exactly for q8_0 / q5_0 / q4_0 blocks and approximately for q4_K /
q6_K (`fake_quantize`).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from casseat_edge.formats.ggml_quant import fake_quantize


class QuantAware:
    """The rounding hooks of one peft model: `types` maps module names of the base model (before
    peft wrapped it) to GGML types; `detach()` undoes every change."""

    def __init__(self, model: Any, types: dict[str, str], ftype: str) -> None:
        from peft.tuners.lora import LoraLayer

        self.ftype = ftype
        self.types = types
        self.seconds = 0.0  # spent rounding
        self.roundings = 0
        self._patched: list[Any] = []
        self._frozen: list[tuple[torch.Tensor, torch.Tensor]] = []
        base = model.get_base_model()
        modules = dict(base.named_modules())
        rounded: set[int] = set()
        for name, kind in types.items():
            module = modules[name]
            if isinstance(module, LoraLayer):
                self._patch(module, kind)
            elif id(module.weight) not in rounded:  # frozen, no adapter (a tied weight once)
                rounded.add(id(module.weight))
                weight = module.weight
                self._frozen.append((weight, weight.detach().clone()))
                with torch.no_grad():
                    weight.copy_(fake_quantize(weight, kind).to(weight.dtype))

    def _patch(self, layer: Any, kind: str) -> None:
        """The base linear of a peft LoRA layer returns x @ (Q(W + BA) - BA)^T + bias."""
        linear = layer.base_layer
        adapter = layer.active_adapters[0]
        cache: dict[str, Any] = {"a": None, "b": None, "weight": None}

        def effective() -> torch.Tensor:
            # a copy of the adapter says whether it changed (fused optimizers update parameters
            # without bumping their version counters); it is r x (rows + columns), small
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            if cache["weight"] is None or not (
                torch.equal(a, cache["a"]) and torch.equal(b, cache["b"])
            ):
                start = time.perf_counter()
                with torch.no_grad():
                    delta = layer.get_delta_weight(adapter).to(torch.float32)
                    weight = linear.weight.to(torch.float32)
                    cache["weight"] = fake_quantize(weight + delta, kind).sub_(delta)
                    cache["a"], cache["b"] = a.detach().clone(), b.detach().clone()
                self.seconds += time.perf_counter() - start
                self.roundings += 1
            return cache["weight"]

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return F.linear(x, effective(), linear.bias)

        linear.forward = forward
        self._patched.append(linear)

    def detach(self) -> None:
        """Back to the plain model: base linears forward as usual, frozen weights unrounded."""
        for linear in self._patched:
            del linear.forward  # the instance attribute; the class's forward shows again
        with torch.no_grad():
            for weight, original in self._frozen:
                weight.copy_(original)
        self._patched, self._frozen = [], []

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for kind in self.types.values():
            counts[kind] = counts.get(kind, 0) + 1
        return {
            "ftype": self.ftype,
            "types": dict(sorted(counts.items())),
            "roundings": self.roundings,
            "rounding_seconds": round(self.seconds, 2),
        }


def attach_qat(model: Any, types: dict[str, str], ftype: str) -> QuantAware:
    """Hook `model` (a peft LoRA model) and remember the hooks on it (`model.casseat_qat`)."""
    qat = QuantAware(model, types, ftype)
    model.casseat_qat = qat
    return qat
