"""Supervised fine-tuning on Cas-SEAT samples (LoRA, QLoRA, full) with the Hugging Face Trainer.

from training.sft import SFTConfig, train
summary = train(SFTConfig(data="synth", model="tiny:smolvlm", out="sft"))
"""

from __future__ import annotations

import logging
from typing import Any

from training.sft.config import SFTConfig

# bitsandbytes (imported by peft and the Trainer) notes on every import that an optional
# `kernels` package is missing; it is harmless on CPU (ENVIRONMENT.md), so keep stderr clean
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["SFTConfig", "train"]


def train(config: SFTConfig, progress: Any = None) -> dict[str, Any]:
    """See `training.sft.run.train` (imported lazily: it pulls in torch and transformers)."""
    from training.sft.run import train as _train

    return _train(config, progress)
