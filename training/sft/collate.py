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


@dataclasses.dataclass
class PackingCollator:
    """`data_collator` that packs a batch's samples into as few rows of at most `max_length`
    tokens as they fit (first-fit decreasing), with no padding between them. Position ids
    restart at 0 for each sample and no attention mask is passed, so transformers' attention
    keeps each sample to itself (its packed-sequence detection; only for architectures whose
    `ArchSpec.packable` says the model honours it). Labels are unchanged: every sample starts
    with prompt tokens (label -100), so no token is trained to predict the next sample. Image
    tensors are stacked in the order their samples appear in the packed rows."""

    pad_token_id: int
    max_length: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [f["input_ids"].shape[-1] for f in features]
        rows = pack_rows(lengths, self.max_length)
        ids, labels, positions = [], [], []
        for row in rows:
            ids.append(torch.cat([features[i]["input_ids"][0] for i in row]))
            labels.append(torch.cat([features[i]["labels"][0] for i in row]))
            positions.append(torch.cat([torch.arange(lengths[i]) for i in row]))
        batch = {
            "input_ids": _right_pad(ids, self.pad_token_id),
            "labels": _right_pad(labels, IGNORE_INDEX),
            "position_ids": _right_pad(positions, 0),
        }
        order = [i for row in rows for i in row]
        for key in features[0]:
            if key not in TOKEN_KEYS:
                batch[key] = _stack_images([features[i][key] for i in order])
        return batch


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows whose sums stay within `capacity` (first-fit
    decreasing; an item longer than `capacity` gets a row of its own)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[index] <= room:
                rows[r].append(index)
                free[r] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(capacity - lengths[index])
    return rows
