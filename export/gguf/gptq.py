"""Calibrated rounding (GPTQ) for the 32-wide symmetric blocks of a llama.cpp-quantized GGUF.

llama.cpp rounds every weight to its nearest grid value (optionally weighted per column by an
importance matrix). Rounding errors of one row add up in the layer's output as sum_j x_j e_j;
GPTQ (Frantar et al., 2022) rounds one input column at a time and moves each column's error onto
the columns not yet rounded, in the proportions the inverse input covariance H^-1 gives, so the
errors cancel in the output instead of adding up. On the Cas-SEAT student (SmolLM2-135M, whose
576-wide rows make llama.cpp's q4_k_m store 166 of 211 matrices as q5_0) the output error
weighted by H falls to 17% of llama.cpp's rounding and the teacher-forced KL to the f16 model on
held-out solutions from 0.0140 to 0.0081 nats (`benchmarks/gguf_calibration.py`), and on all
187 held-out problems its q4_k_m scores f16's 0.321 where llama.cpp's rounding scores 0.251
(README, "The main job"), which is why the main job's q4 exports use it.

The file keeps llama.cpp's types, block layout and size: llama.cpp quantizes first (its recipe
picks each tensor's type), then the q5_0 / q4_0 tensors get new bits in place, computed from the
full-precision weights. Every other type (K-quants, q8_0) is left as llama.cpp rounded it.

    covariances = input_covariances(loaded, "synth/", limit=64)
    stats = gptq_rewrite("model-f32.gguf", "model-q4_k_m.gguf", covariances)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import CasseatError
from casseat_edge.formats.gguf_header import read_gguf_header, tensor_data
from export.gguf.imatrix import run_calibration

BLOCK = 32
# type name -> the grid: d = (signed max of the block) / -half; q = clamp(trunc(x/d + half + .5))
GRIDS = {"Q5_0": 16, "Q4_0": 8}
DAMPING = 0.01  # of the mean diagonal of H, added to it: keeps H invertible (dead columns)


@dataclasses.dataclass
class Covariances:
    """Sum over calibration tokens of x x^T of each weight's input (float64), per GGUF weight
    name. Weights that read one input (q/k/v, gate/up) share one sum: `inputs` maps every name
    to the name its sum is kept under."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    conversations: int
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return self.inputs.get(name, name) in self.sums

    def mean(self, name: str) -> np.ndarray:
        return self.sums[self.inputs.get(name, name)] / max(self.counts[name], 1)


def gptq_targets(quantized: str | Path) -> set[str]:
    """The tensors of a quantized GGUF that `gptq_rewrite` re-rounds (its q5_0 / q4_0 ones)."""
    return {t.name for t in read_gguf_header(quantized, ()).tensors if t.kind.name in GRIDS}


def input_covariances(
    loaded: Any,
    data: str | Path,
    limit: int = 64,
    progress: Callable[[int, int], None] | None = None,
    names: set[str] | None = None,
) -> Covariances:
    """x x^T of every decoder linear layer's input (of those GGUF `names` only, when given) over
    `limit` samples of a synth directory. The tied lm_head (token_embd) is skipped: llama.cpp
    gives it q6_k (q8_0 where its rows do not fit K-quant blocks), types GPTQ here does not
    re-round."""
    sums: dict[str, Any] = {}
    inputs: dict[str, str] = {}  # q/k/v and gate/up read one tensor: one product, one sum
    last: list[Any] = [None, None, ""]  # the input, its x x^T, the first name that read it

    def collect(name: str, x: Any) -> None:
        if name == "token_embd.weight" or (names is not None and name not in names):
            return
        if not _same_tensor(last[0], x):
            flat = x.reshape(-1, x.shape[-1]).float()
            last[:] = [x, (flat.T @ flat).double(), name]
        owner = inputs.setdefault(name, last[2])
        if owner == name:
            sums[name] = sums[name].add_(last[1]) if name in sums else last[1]

    whole = names is None or "output.weight" in names  # the only input the last layer gives
    counts, _, n = run_calibration(loaded, data, limit, collect, progress, logits=whole)
    last[:] = [None, None, ""]
    return Covariances({k: v.numpy() for k, v in sums.items()}, counts, n, inputs)


def _same_tensor(held: Any, x: Any) -> bool:
    """Whether x views the memory of `held` (the hooks see a fresh `detach()` of one input per
    layer; holding the first keeps its memory from being reused by another tensor meanwhile)."""
    return held is not None and held.data_ptr() == x.data_ptr() and held.shape == x.shape


def gptq_rewrite(
    source_f32: str | Path, quantized: str | Path, covariances: Covariances
) -> dict[str, Any]:
    """Re-round, in place, every q5_0 / q4_0 tensor of `quantized` that has a covariance, from
    the same tensor in `source_f32` (the file llama.cpp quantized). Returns what changed and the
    H-weighted output error relative to llama.cpp's rounding (summed over those tensors).

    Tensors of one type that read one input (q/k/v, gate/up) are one GPTQ problem: GPTQ treats
    rows independently, so their rows are stacked and H factored once."""
    import gguf

    source = read_gguf_header(source_f32, ())
    target = read_gguf_header(quantized, ())
    groups: dict[tuple[str, str], list[Any]] = {}
    for tensor in target.tensors:
        if tensor.kind.name in GRIDS and tensor.name in covariances:
            key = (covariances.inputs.get(tensor.name, tensor.name), tensor.kind.name)
            groups.setdefault(key, []).append(tensor)
    rewritten, before, after = 0, 0.0, 0.0
    for (_, kind), tensors in groups.items():
        parts = [np.asarray(tensor_data(source, source.tensor(t.name))) for t in tensors]
        weights = np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts]).astype(np.float64)
        h = covariances.mean(tensors[0].name)
        q, d = gptq_blocks(weights, h, GRIDS[kind])
        new = dequantize_blocks(q, d, half=GRIDS[kind])
        row = 0
        for tensor in tensors:
            data = tensor_data(target, tensor, writable=True)
            rows = slice(row, row + math.prod(data.shape[:-1]))  # 3-D tensors: rows of all
            row = rows.stop
            packed = pack_blocks(q[rows], d[rows], half=GRIDS[kind])
            if packed.nbytes != data.nbytes:  # a layout change in ggml would land here
                raise CasseatError(
                    f"{tensor.name}: {packed.nbytes} packed bytes, but the {kind} tensor "
                    f"llama.cpp wrote holds {data.nbytes}; export without --gptq"
                )
            old = gguf.quants.dequantize(np.asarray(data), tensor.kind)
            before += output_error(old.reshape(-1, weights.shape[1]), weights[rows], h)
            after += output_error(new[rows], weights[rows], h)
            data[...] = packed.reshape(data.shape)
            data.flush()
            rewritten += 1
    return {
        "method": "gptq",
        "tensors": rewritten,
        "conversations": covariances.conversations,
        "output_error_vs_llama_cpp": round(after / before, 4) if before else None,
    }


def output_error(approx: np.ndarray, weights: np.ndarray, h: np.ndarray) -> float:
    """sum over rows of e H e^T: the mean squared output error over the calibration inputs."""
    diff = approx.astype(np.float64) - weights
    return float(((diff @ h) * diff).sum())  # einsum "ij,jk,ik->" loops naively: 20x slower


def gptq_blocks(weights: np.ndarray, h: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ on a [rows, columns] matrix with 32-wide blocks of `half`-symmetric levels: returns
    (q [rows, columns] uint8 in 0..2*half-1, d [rows, columns/32] float16). Each block's scale is
    llama.cpp's (from the block's largest magnitude) taken after the errors moved into it."""
    import torch

    w = torch.from_numpy(weights.copy())
    h = torch.from_numpy(h.copy())
    rows, cols = w.shape
    if cols % BLOCK:
        raise ValueError(f"rows of {cols} columns do not split into {BLOCK}-wide blocks")
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += DAMPING * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(inverse, upper=True)  # row j: how column j's error spreads right
    # the column loop works on transposed blocks: one column is one contiguous row of 32 x rows
    q = torch.zeros(cols, rows, dtype=torch.uint8)
    scales = torch.zeros(rows, cols // BLOCK, dtype=torch.float16)
    for start in range(0, cols, BLOCK):
        stop = start + BLOCK
        block, errors = w[:, start:stop].T.contiguous(), torch.zeros(BLOCK, rows, dtype=w.dtype)
        peak = torch.gather(block, 0, block.abs().argmax(0, keepdim=True))[0]
        d16 = (peak / -half).to(torch.float16)
        scales[:, start // BLOCK] = d16
        d = d16.to(w.dtype)
        inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
        for j in range(BLOCK):
            column = block[j]
            level = torch.clamp(torch.floor(column * inv + half + 0.5), 0, 2 * half - 1)
            q[start + j] = level.to(torch.uint8)
            error = (column - (level - half) * d) / u[start + j, start + j]
            block[j:] -= torch.outer(u[start + j, start + j : stop], error)
            errors[j] = error
        w[:, stop:] -= errors.T @ u[start:stop, stop:]
    return q.T.contiguous().numpy(), scales.numpy()


def dequantize_blocks(q: np.ndarray, d: np.ndarray, half: int) -> np.ndarray:
    rows, cols = q.shape
    levels = q.reshape(rows, cols // BLOCK, BLOCK).astype(np.float32) - half
    return (levels * d.astype(np.float32)[..., None]).reshape(rows, cols)


def pack_blocks(q: np.ndarray, d: np.ndarray, half: int) -> np.ndarray:
    """ggml's byte layout, one row of bytes per block: q5_0 = d (f16), the 32 fifth bits (u32),
    then low nibbles (element j and j+16 share a byte); q4_0 = d, then the nibbles."""
    n = q.size // BLOCK
    levels = q.reshape(n, 2, BLOCK // 2)
    nibbles = (levels[:, 0, :] & 0x0F) | ((levels[:, 1, :] & 0x0F) << 4)
    scale = d.reshape(n, 1).astype(np.float16).view(np.uint8)
    if half == 8:
        return np.concatenate([scale, nibbles.astype(np.uint8)], axis=-1)
    high = np.packbits((q.reshape(n, 1, BLOCK) >> 4) & 1, axis=-1, bitorder="little")
    return np.concatenate([scale, high.reshape(n, 4), nibbles.astype(np.uint8)], axis=-1)
