"""Logit parity between a reference (PyTorch) and an exported model, shared by every exporter's
verification: top-1 agreement, mean KL(ref || got) and the largest difference relative to the
reference's largest logit, each checked against the bounds of the export's type.

    row = logit_parity("logits", torch_logits, ort_logits, entry, "decoder.onnx", "onnxruntime")
    row["passed"], row["failures"]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def logit_parity(
    check: str, ref: np.ndarray, got: np.ndarray, entry: Any, file: str, runtime: str
) -> dict[str, Any]:
    """Compare [positions, vocab] logits; `entry` has `name`, `top1`, `kl`, `max_abs` (relative,
    or None) and `bounds()`. The row's `failures` name every bound that was missed."""
    vocab = min(ref.shape[-1], got.shape[-1])  # llama.cpp may pad the vocabulary
    ref, got = ref[..., :vocab].astype(np.float64), got[..., :vocab].astype(np.float64)
    top1 = float((ref.argmax(-1) == got.argmax(-1)).mean())
    log_ref, log_got = log_softmax(ref), log_softmax(got)
    kl = float(np.mean(np.sum(np.exp(log_ref) * (log_ref - log_got), -1)))
    diff = float(np.abs(ref - got).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-6)
    failures = [] if np.isfinite(got).all() else [f"{runtime} returned non-finite logits"]
    if top1 < entry.top1:
        failures.append(f"top1 {top1:.3f} < {entry.top1}")
    if not kl <= entry.kl:  # also catches NaN
        failures.append(f"kl {kl:.2e} > {entry.kl:.0e}")
    if entry.max_abs is not None and not rel <= entry.max_abs:
        failures.append(f"rel max abs {rel:.2e} > {entry.max_abs:.0e}")
    return {
        "check": check, "file": file, "type": entry.name, "positions": int(ref.shape[0]),
        "top1": round(top1, 4), "kl": float(f"{kl:.3g}"), "max_abs": float(f"{diff:.3g}"),
        "rel_max_abs": float(f"{rel:.3g}"), "bounds": entry.bounds(), "failures": failures,
        "passed": not failures,
    }  # fmt: skip
