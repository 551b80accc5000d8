"""bitsandbytes checkpoints (int8 `Linear8bitLt`, 4-bit NF4 `Linear4bit`) on CPU or GPU.

Each method is a `QUANT` registry entry: its `BitsAndBytesConfig` and its parity tolerances.
`quantize_bnb` loads the fp32 source, quantizes on load (`device_map="cpu"` on CPU machines),
saves safetensors plus the processor, then compares next-token logits on `PARITY_PROMPTS`.
`BnbExporter` is its `EXPORTERS` entry ("bnb"): the same contract and write path as GGUF and
ONNX (`casseat_edge.exporting`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

from casseat_edge.artifacts import (
    dir_size,
    sha256_file,
    sha256_json,
    write_manifest,
)
from casseat_edge.errors import BackendUnavailableError, ConfigError
from casseat_edge.exporting import Exporter, publish
from casseat_edge.locks import DirectoryLock
from casseat_edge.models import ArchSpec, LoadedModel, ModelRef, load_model, resolve_model
from casseat_edge.registry import EXPORTERS, QUANT
from quantize.config import QuantizeConfig

PARITY_PROMPTS = (
    "Question: A rectangle is 3 cm wide and 4 cm long. What is its area?\nAnswer:",
    "Tom has 7 apples and buys 5 more. How many apples does he have now?",
    "The capital of France is Paris. The capital of Italy is",
    "Explain in one sentence why the sky looks blue during the day.",
)


class BnbMethod:
    """Base of the bitsandbytes entries; subclasses set the attributes and `quant_kwargs`.

    Tolerances come from SmolLM2-135M (67 positions): int8 measured top1 0.94, KL 0.025 (LLM.int8
    also quantizes activations); nf4 top1 0.75, KL 0.29 (its source is a dequantized Q4_1, whose
    grid NF4 does not share). Tiny random models sit far inside both.
    """

    name: ClassVar[str]
    bits: ClassVar[int]
    top1_min: ClassVar[float]  # least next-token top-1 agreement with the fp32 source
    kl_max: ClassVar[float]  # largest mean KL(source || quantized) over the parity positions

    @classmethod
    def quant_kwargs(cls, torch: Any) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"bits": cls.bits, "top1_min": cls.top1_min, "kl_max": cls.kl_max}


@QUANT.register("bnb-int8")
class BnbInt8(BnbMethod):
    """bitsandbytes LLM.int8 (Linear8bitLt): int8 weights with a float scale per row."""

    name, bits, top1_min, kl_max = "bnb-int8", 8, 0.9, 0.05

    @classmethod
    def quant_kwargs(cls, torch: Any) -> dict[str, Any]:
        return {"load_in_8bit": True}


@QUANT.register("bnb-nf4")
class BnbNf4(BnbMethod):
    """bitsandbytes NF4 (Linear4bit): 4-bit normal-float weights, a scale per 64 weights."""

    name, bits, top1_min, kl_max = "bnb-nf4", 4, 0.65, 0.5

    @classmethod
    def quant_kwargs(cls, torch: Any) -> dict[str, Any]:
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": torch.float32,
        }


BNB_METHODS: dict[str, type[BnbMethod]] = {"bnb-int8": BnbInt8, "bnb-nf4": BnbNf4}


def quantize_bnb(config: QuantizeConfig) -> dict[str, Any]:
    """Quantize, save, measure and verify; see the package docstring."""
    with DirectoryLock(config.out):  # one writer per --out
        return _quantize_bnb(config)


def _quantize_bnb(config: QuantizeConfig) -> dict[str, Any]:
    start = time.time()
    method = BNB_METHODS[config.method]
    ref = resolve_model(config.model)  # a LoRA adapter directory fails here, naming the fix
    source = load_model(ref)  # also rejects GGUF/export artifacts
    if getattr(source.model.config, "quantization_config", None) is not None:
        raise ConfigError(f"{config.model} is already quantized; pass its float source model")

    def write(stage: Path) -> dict[str, Any]:
        model = _load_quantized(ref, source, method)
        model.save_pretrained(stage, safe_serialization=True)
        source.processor.save_pretrained(stage)
        linear_bytes, linear_params = _quantized_linear_bytes(model)
        parity = _parity(source, model, method)
        sizes = {p.name: p.stat().st_size for p in sorted(stage.iterdir())}
        files = [{"file": name, "bytes": size, "size_mb": round(size / 1e6, 3)}
                 for name, size in sizes.items()]  # fmt: skip
        summary = {
            "format": "bnb",
            "model": config.model,
            "method": method.name,
            "out": str(config.out),
            "files": files,
            "size_mb": round(dir_size(stage) / 1e6, 3),
            "quantized_params": linear_params,
            "bits_per_weight": round(8 * linear_bytes / linear_params, 3),
            "parity": [parity],
            "verified": True,
            "passed": parity["passed"],
            "seconds": round(time.time() - start, 1),
        }
        inputs = {"model": config.model, "source_sha256": _source_hash(ref.path)}
        write_manifest(stage, "model", config.to_dict(), inputs, **summary)
        return summary

    return publish(config, method.name, write, _describe_failure, kind="model")


def _describe_failure(row: dict[str, Any]) -> str:
    return (
        f"parity vs fp32: top1 {row['top1']} (min {row['top1_min']}), KL {row['kl']} "
        f"(max {row['kl_max']})"
    )


@EXPORTERS.register("bnb")
class BnbExporter(Exporter):
    """bitsandbytes int8 / nf4 safetensors checkpoints for the torch backend, verified."""

    config_class = QuantizeConfig

    @staticmethod
    def describe() -> dict[str, Any]:
        return {"method": list(BNB_METHODS), "backend": "torch (transformers + bitsandbytes)"}

    @staticmethod
    def export(config: QuantizeConfig) -> dict[str, Any]:
        return quantize_bnb(config)


def _load_quantized(ref: ModelRef, source: LoadedModel, method: type[BnbMethod]) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            f"--method {method.name} needs bitsandbytes; pip install 'bitsandbytes>=0.45,<0.51'"
        ) from None
    import torch
    import transformers

    quant = transformers.BitsAndBytesConfig(
        **method.quant_kwargs(torch), llm_int8_skip_modules=float_modules(ref.arch)
    )
    auto = getattr(transformers, ref.arch.auto_class)
    device_map = "cpu" if not torch.cuda.is_available() else {"": 0}
    model = auto.from_pretrained(
        ref.path, quantization_config=quant, device_map=device_map, dtype=torch.float32
    )
    return model.eval()


def float_modules(arch: type[ArchSpec]) -> list[str]:
    """Modules kept float: the head, and the vision tower and connector (`ArchSpec.parts()`),
    whose error would compound into every image token."""
    return [arch.lm_head, *arch.vision_prefixes, *arch.connector_prefixes]


def _quantized_linear_bytes(model: Any) -> tuple[int, int]:
    """Bytes the checkpoint spends on quantized linear weights (packed weights, scales, quant
    state; not biases) and their parameter count: their ratio is the true bits per weight."""
    import bitsandbytes as bnb
    import torch

    total, params = 0, 0
    for module in model.modules():
        if isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
            params += module.in_features * module.out_features
            state = module.state_dict()  # the tensors save_pretrained writes for this layer
            total += sum(
                t.numel() * t.element_size()
                for k, t in state.items()
                if k != "bias" and isinstance(t, torch.Tensor)
            )
    return total, params


def _parity(source: LoadedModel, model: Any, method: type[BnbMethod]) -> dict[str, Any]:
    """Top-1 agreement and mean KL(source || quantized) of next-token logits at every position."""
    import torch

    agree, kls = [], []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MatMul8bitLt's per-call fp16 cast notice
        for prompt in PARITY_PROMPTS:
            ids = source.tokenizer(prompt, return_tensors="pt").input_ids
            ref_logp = source.model(ids).logits[0].double().log_softmax(-1)
            q_logp = model(ids.to(model.device)).logits[0].double().cpu().log_softmax(-1)
            agree.append(ref_logp.argmax(-1) == q_logp.argmax(-1))
            kls.append((ref_logp.exp() * (ref_logp - q_logp)).sum(-1))
    top1 = torch.cat(agree).double().mean().item()
    kl = torch.cat(kls).mean().item()
    passed = top1 >= method.top1_min and kl <= method.kl_max
    return {
        "check": "logits",
        "type": method.name,
        "positions": int(sum(a.numel() for a in agree)),
        "top1": round(top1, 4),
        "kl": round(kl, 5),
        "top1_min": method.top1_min,
        "kl_max": method.kl_max,
        "passed": passed,
    }


def _source_hash(path: Path) -> str:
    """Hash of the source weights and config (file name -> sha256), stable across copies."""
    files = sorted([*path.glob("*.safetensors"), *path.glob("*.bin"), path / "config.json"])
    return sha256_json({p.name: sha256_file(p) for p in files if p.is_file()})
