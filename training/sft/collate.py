"""Batching encoded samples: right padding for text, stacking for the processor's image tensors.

Each dataset item is one conversation encoded alone by the shared preprocessing path (batch of 1),
so the tokens trained on are exactly those the runtime sees. Here they are joined: token tensors
are right-padded (labels with -100, so padding never enters the loss); image tensors are
concatenated on their first axis, after zero-padding the image axis where samples carry different
numbers of image crops (Idefics3 drops all-zero padding images itself). Qwen2-VL's flattened
patches and grid sizes concatenate as they are.

    collator = SFTCollator(pad_token_id=tokenizer.pad_token_id)
    batch = collator([dataset[0], dataset[1]])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from training.sft.data import IGNORE_INDEX

TOKEN_KEYS = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX}


@dataclasses.dataclass
class SFTCollator:
    """Callable the HF Trainer uses as `data_collator`."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key, pad in TOKEN_KEYS.items():
            if key in features[0]:
                value = self.pad_token_id if pad is None else pad
                batch[key] = _right_pad([f[key][0] for f in features], value)
        for key in features[0]:
            if key not in TOKEN_KEYS:
                batch[key] = _stack_images([f[key] for f in features])
        return batch


def _right_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    longest = max(len(r) for r in rows)
    out = torch.full((len(rows), longest), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _stack_images(tensors: list[torch.Tensor]) -> torch.Tensor:
    if all(t.shape[1:] == tensors[0].shape[1:] for t in tensors):
        return torch.cat(tensors, dim=0)
    if any(t.dim() < 2 or t.shape[2:] != tensors[0].shape[2:] for t in tensors):
        raise ValueError(
            f"cannot batch image tensors of shapes {[tuple(t.shape) for t in tensors]}"
        )
    most = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = t.new_zeros((t.shape[0], most - t.shape[1], *t.shape[2:]))
        padded.append(torch.cat([t, pad], dim=1))
    return torch.cat(padded, dim=0)
