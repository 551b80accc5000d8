"""`SFTConfig`: every knob of `casseat-edge train`, with its help text (the CLI's help).

config = load_config(SFTConfig, overrides={"data": "synth", "model": "tiny:smolvlm"})
train(config)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError
from casseat_edge.models import DEFAULT_MODEL

LM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class SFTConfig(StageConfig):
    """Config of the supervised fine-tuning stage."""

    data: str = option("", "samples directory written by `casseat-edge synth` (samples.jsonl)")
    model: str = option(DEFAULT_MODEL, "base model spec (tiny:<arch>, embedded:..., HF directory)")
    out: str = option("sft", "output directory: merged model, adapter/, logs, checkpoints/")
    method: Literal["lora", "qlora", "full"] = option(
        "lora", "LoRA adapters, LoRA on a 4-bit NF4 base (bitsandbytes), or full fine-tuning"
    )
    epochs: float = option(1.0, "passes over the samples (ignored when --max-steps > 0)")
    max_steps: int = option(0, "optimizer steps to run (0: use --epochs)")
    lr: float = option(2e-4, "peak learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant"] = option(
        "linear", "learning-rate schedule after warm-up"
    )
    warmup_ratio: float = option(0.0, "fraction of the steps spent warming the learning rate up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    batch_size: int = option(4, "samples per device per forward pass")
    grad_accum: int = option(1, "forward passes accumulated per optimizer step")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA path")
    target_modules: tuple[str, ...] = option(
        LM_LINEAR, "linear-layer names that get LoRA adapters (only inside unfrozen parts)"
    )
    lora_layers: int = option(
        0,
        "LoRA on the top this many decoder layers only (0: all); the layers below get no "
        "adapters and need no backward pass: faster steps",
    )
    qat: str = option(
        "",
        "quantization-aware LoRA: train as the GGUF of this type (q8_0, q5_0, q4_0, q4_k_m) "
        "will run, each adapted matrix rounded as llama.cpp rounds it after the merge "
        "(straight-through gradient); '' (default): plain float training",
    )
    freeze_vision: bool = option(True, "keep the vision tower frozen (no adapters, no updates)")
    freeze_connector: bool = option(
        False, "keep the vision-to-text connector frozen (else trained fully, also under LoRA)"
    )
    freeze_lm: bool = option(False, "keep the language model frozen (no adapters, no updates)")
    max_length: int = option(2048, "longest sample in tokens; longer ones are an error")
    skip_long: bool = option(False, "skip (and count) samples longer than --max-length")
    limit: int = option(0, "train on at most this many samples, in file order (0: all)")
    captions: bool = option(
        False,
        "caption-augmented prompts: vision models read the image's caption after the image "
        "(recorded in the manifest; the runtime then adds it too)",
    )
    learn_stage1: bool = option(
        False,
        "also learn an evaluation sample's stage-1 solution where its label says it is right "
        "(the loss always covers the review; a wrong solution under review is never learned)",
    )
    seed: int = option(0, "seed for adapter init, data order and dropout")
    save_steps: int = option(500, "write a checkpoint every this many steps (0: no checkpoints)")
    save_total_limit: int = option(2, "checkpoints kept on disk (oldest deleted)")
    resume: bool = option(False, "continue from the last checkpoint in --out/checkpoints")
    overwrite: bool = option(False, "replace an existing non-empty --out")
    merge: bool = option(True, "LoRA/QLoRA: also write the merged full model (else adapter/ only)")
    logging_steps: int = option(1, "log loss and tokens/s every this many steps")
    threads: int = option(0, "CPU threads for torch (0: leave torch's default)")
    gradient_checkpointing: bool = option(False, "trade compute for memory (recompute activations)")
    bf16: bool = option(
        False, "bfloat16 autocast (float32 master weights); faster on CPUs with AVX512-BF16/AMX"
    )
    dataloader_workers: int = option(0, "background processes preparing batches (0: in-process)")
    group_by_length: bool = option(
        False,
        "batch samples of similar length together (less padding: faster steps; random order "
        "between groups, HF's LengthGroupedSampler)",
    )

    packing: bool = option(
        False,
        "pack each batch's samples into as few rows as fit --max-length (no padding between "
        "them; attention stays within a sample: position ids restart per sample)",
    )

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("--data: required; pass the directory `casseat-edge synth` wrote")
        if not self.out:
            raise ConfigError("--out: required; pass an output directory")
        self._check_positive("batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length")
        self._check_positive("logging_steps")
        self._check_non_negative("max_steps", "save_steps", "limit", "threads", "save_total_limit")
        self._check_non_negative("dataloader_workers", "lora_layers")
        if self.lora_layers and self.method == "full":
            raise ConfigError("--lora-layers: only with --method lora or qlora")
        if not 0 <= self.epochs < float("inf"):  # also refuses nan
            raise ConfigError(f"--epochs: must be a finite number >= 0, found {self.epochs}")
        if self.max_steps == 0 and self.epochs == 0:
            raise ConfigError("--epochs: must be > 0 (or pass --max-steps)")
        if not 0 < self.lr < float("inf"):  # also refuses nan
            raise ConfigError(f"--lr: must be a finite number > 0, found {self.lr}")
        for name in ("lora_dropout", "warmup_ratio", "weight_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:  # also refuses nan
                raise ConfigError(f"{_flag(name)}: must be in [0, 1), found {getattr(self, name)}")
        if self.method != "full" and not self.target_modules:
            raise ConfigError("--target-modules: LoRA needs at least one linear-layer name")
        if self.freeze_vision and self.freeze_connector and self.freeze_lm:
            raise ConfigError(
                "--freeze-vision/--freeze-connector/--freeze-lm: nothing left to train"
            )
        if self.qat:
            from casseat_edge.formats.ggml_quant import QAT_TYPES

            if self.qat not in QAT_TYPES:
                raise ConfigError(
                    f"--qat: no llama.cpp rounding recipe for {self.qat!r} here; choose one of "
                    + ", ".join(QAT_TYPES)
                )
            if self.method != "lora":
                raise ConfigError(
                    "--qat: only with --method lora (the adapter learns the rounding)"
                )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite: pick one")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)}: must be >= 1, found {getattr(self, name)}")

    def _check_non_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)}: must be >= 0, found {getattr(self, name)}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
