"""The base model prepared for a training method: freezing, LoRA adapters, 4-bit NF4 loading.

Parts of a model are named by its architecture entry (`ArchSpec.parts()`, looked up by the HF
`architectures` value): `vision` (the image encoder), `connector` (vision-to-text projection)
and `lm` (decoder, embeddings, head). `--freeze-*` flags act on these parts: under full
fine-tuning a frozen part gets no gradient; under LoRA only unfrozen parts get adapters on the
`--target-modules` linears, and an unfrozen connector is trained in full (peft `modules_to_save`).

    loaded = prepare_model(config)        # LoadedModel whose .model is ready for the Trainer
"""

from __future__ import annotations

import re
from typing import Any

import torch

from casseat_edge.errors import BackendUnavailableError, ConfigError, UnsupportedArchError
from casseat_edge.models import ArchSpec, LoadedModel, load_model, resolve_model, supported_arch
from training.sft.config import SFTConfig


def parts_for(architecture: str) -> dict[str, tuple[str, ...]]:
    """The architecture's parts (`ArchSpec.parts()`: vision, connector, lm module prefixes)."""
    return supported_arch(architecture, "training").parts()


def part_of(name: str, parts: dict[str, tuple[str, ...]]) -> str:
    """The part a parameter or module name belongs to (longest prefix match)."""
    best, best_len = "lm", -1
    for part, prefixes in parts.items():
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = part, len(prefix)
    return best


def trainable_parts(config: SFTConfig) -> set[str]:
    frozen = {"vision": config.freeze_vision, "connector": config.freeze_connector}
    frozen["lm"] = config.freeze_lm
    return {part for part, is_frozen in frozen.items() if not is_frozen}


def prepare_model(config: SFTConfig) -> LoadedModel:
    """Load the base for `config.method` and make exactly the intended parameters trainable."""
    loaded = load_base(config.model, quantized=config.method == "qlora")
    loaded.model.train()
    parts = parts_for(loaded.arch.architecture)
    if config.method == "full":
        _freeze(loaded.model, parts, trainable_parts(config))
    else:
        types = _qat_types(config, loaded)
        loaded.model = add_lora(loaded.model, config, parts)
        if types:
            from training.sft.qat import attach_qat

            attach_qat(loaded.model, types, config.qat)
    if config.gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        loaded.model.enable_input_require_grads()
    if not any(p.requires_grad for p in loaded.model.parameters()):
        raise ConfigError("--freeze-*/--target-modules: no parameter is left to train")
    return loaded


def _qat_types(config: SFTConfig, loaded: LoadedModel) -> dict[str, str]:
    """--qat: the GGML type of every decoder matrix (read before peft renames the modules)."""
    if not config.qat:
        return {}
    from casseat_edge.formats.ggml_quant import tensor_types

    try:
        return tensor_types(config.qat, loaded)
    except UnsupportedArchError as error:
        raise ConfigError(f"--qat: {error}") from None


def load_base(spec: str, quantized: bool = False) -> LoadedModel:
    """The base model in float32, or with NF4 4-bit linears (bitsandbytes) for QLoRA."""
    if not quantized:
        return load_model(spec)
    import transformers

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            "--method qlora needs bitsandbytes; pip install 'bitsandbytes>=0.45,<0.51'"
        ) from None
    ref = resolve_model(spec)
    loaded = load_model(ref)  # validates the spec and gives the processor
    quant = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=_skip_quantizing(ref.arch),
    )
    auto = getattr(transformers, ref.arch.auto_class)
    model = auto.from_pretrained(
        ref.path, quantization_config=quant, device_map=_device_map(), dtype=torch.float32
    )
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return LoadedModel(model, loaded.processor, loaded.arch, ref)


def _device_map() -> Any:
    if torch.cuda.is_available():
        import os

        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return "cpu"


def _skip_quantizing(arch: type[ArchSpec]) -> list[str]:
    """Keep the vision tower, connector and head in float: QLoRA quantizes the decoder only."""
    return [arch.lm_head, *arch.vision_prefixes, *arch.connector_prefixes]


def _freeze(model: Any, parts: dict[str, tuple[str, ...]], trainable: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = part_of(name, parts) in trainable


def add_lora(model: Any, config: SFTConfig, parts: dict[str, tuple[str, ...]]) -> Any:
    """Wrap `model` in a peft LoRA model over the targeted linears of the unfrozen parts."""
    from peft import LoraConfig, get_peft_model

    trainable = trainable_parts(config)
    targets = lora_targets(model, config.target_modules, parts, trainable - {"connector"})
    if config.lora_layers:  # the language model's top layers; other parts keep theirs
        lm = [name for name in targets if part_of(name, parts) == "lm"]
        targets = [name for name in targets if name not in lm]
        targets += top_layers(lm, config.lora_layers)
    if not targets and trainable == {"connector"}:
        raise ConfigError(
            "--freeze-lm/--freeze-vision leave only the connector, which LoRA does not adapt; "
            "train it with --method full --freeze-lm"
        )
    if not targets:
        raise ConfigError(
            f"--target-modules: none of {', '.join(config.target_modules)} is a linear layer "
            f"in the unfrozen parts ({', '.join(sorted(trainable))})"
        )
    save = list(parts["connector"]) if "connector" in trainable else []
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=save or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def lora_targets(
    model: Any, names: tuple[str, ...], parts: dict[str, tuple[str, ...]], trainable: set[str]
) -> list[str]:
    """Full names of the linear layers named `names` inside the `trainable` parts."""
    linear = (torch.nn.Linear, *_bnb_linears())
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, linear)
        and name.rsplit(".", 1)[-1] in names
        and part_of(name, parts) in trainable
    ]


def top_layers(names: list[str], keep: int) -> list[str]:
    """The names (of one decoder's linears) inside its top `keep` layers (`...layers.<i>...`)."""
    index = {name: _layer_index(name) for name in names}
    layers = sorted({i for i in index.values() if i is not None})
    if not layers:
        raise ConfigError(
            "--lora-layers: no targeted linear sits in the language model's numbered layers"
        )
    top = set(layers[-keep:])
    return [name for name in names if index[name] in top]


def _layer_index(name: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def count_quantized(model: Any) -> int:
    """Number of 4-bit/8-bit bitsandbytes linears in `model` (0 unless QLoRA)."""
    kinds = _bnb_linears()
    return sum(isinstance(m, kinds) for m in model.modules()) if kinds else 0


def _bnb_linears() -> tuple[type, ...]:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return ()
    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
