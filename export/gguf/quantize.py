"""llama.cpp's own quantizer (`llama_model_quantize`) for the text GGUF, and the GGUF type table.

Every type besides f32/f16 is made from an f32 GGUF by llama.cpp itself, so K-quants (q4_k_m...)
get llama.cpp's mixed per-tensor recipes; tensors whose rows do not fit a type's block size fall
back to a type llama.cpp picks (tiny models: 64-wide rows cannot be K-quantised).

    quantize_gguf("model-f32.gguf", "model-q4_k_m.gguf", "q4_k_m")
"""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from casseat_edge.errors import BackendUnavailableError, CasseatError
from casseat_edge.registry import QUANT

if TYPE_CHECKING:
    from export.gguf.imatrix import Imatrix


@dataclasses.dataclass(frozen=True)
class GgufQuantType:
    """One GGUF text-model type: llama.cpp's ftype and the parity bounds verification applies.

    `max_abs`: bound on |logit difference| (f32/f16 only); `top1`: minimum top-1 agreement with
    PyTorch over the verified positions; `kl`: bound on the mean KL(torch || llama.cpp) in nats."""

    name: str
    ftype: str  # llama_cpp.LLAMA_FTYPE_* suffix
    top1: float
    kl: float
    max_abs: float | None = None
    format: str = "gguf"

    def bounds(self) -> dict[str, object]:
        return {"top1": self.top1, "kl": self.kl, "max_abs": self.max_abs}

    def describe(self) -> dict[str, object]:
        bounds = f"top1 >= {self.top1}, KL <= {self.kl}"
        if self.max_abs is not None:
            bounds += f", rel max |diff| <= {self.max_abs}"
        summary = f"GGUF text model {self.name} (llama.cpp {self.ftype}); {bounds}"
        return {"format": self.format, **self.bounds(), "summary": summary}


# Bounds: f32/f16/q8_0/q6_k/q4_k_m/q4_0 measured on the embedded SmolLM2-135M over 200 positions
# of PARITY_TEXT (top1 / KL: f16 1.0 / 5e-6, q8_0 0.93 / 4.5e-3, q6_k 0.925 / 1.1e-2, q4_k_m
# 0.86 / 5.4e-2, q5_k_m 0.845 / 7.2e-2, q3_k_m 0.805 / 0.125, q4_0 0.72 / 0.30) with margin; the
# other types are interpolated. SmolLM2's 576-wide rows are not a multiple of 256, so K-quant types
# fall back to other block types for tensors with 576-wide rows (q6_k is ~8.1 bits/weight). Even the
# packaged Q4_1 file, whose weights equal the HF copy's exactly, reaches only 0.97 / 3e-3: llama.cpp
# quantizes activations to 8 bits in quantized matmuls. max_abs is relative to max |torch logit|;
# f32 is not bit-exact because llama.cpp's KV cache is f16 (tiny f32 models: up to ~1e-3).
GGUF_TYPES = {
    t.name: t
    for t in (
        GgufQuantType("f32", "ALL_F32", top1=0.99, kl=1e-4, max_abs=2e-3),
        GgufQuantType("f16", "MOSTLY_F16", top1=0.98, kl=1e-3, max_abs=1e-2),
        GgufQuantType("bf16", "MOSTLY_BF16", top1=0.95, kl=5e-3),
        GgufQuantType("q8_0", "MOSTLY_Q8_0", top1=0.88, kl=0.015),
        GgufQuantType("q6_k", "MOSTLY_Q6_K", top1=0.87, kl=0.03),
        GgufQuantType("q5_k_m", "MOSTLY_Q5_K_M", top1=0.78, kl=0.12),
        GgufQuantType("q5_k_s", "MOSTLY_Q5_K_S", top1=0.76, kl=0.15),
        GgufQuantType("q5_1", "MOSTLY_Q5_1", top1=0.78, kl=0.12),
        GgufQuantType("q5_0", "MOSTLY_Q5_0", top1=0.76, kl=0.15),
        GgufQuantType("q4_k_m", "MOSTLY_Q4_K_M", top1=0.78, kl=0.12),
        GgufQuantType("q4_k_s", "MOSTLY_Q4_K_S", top1=0.72, kl=0.2),
        GgufQuantType("q4_1", "MOSTLY_Q4_1", top1=0.65, kl=0.45),
        GgufQuantType("q4_0", "MOSTLY_Q4_0", top1=0.62, kl=0.5),
        GgufQuantType("q3_k_l", "MOSTLY_Q3_K_L", top1=0.55, kl=0.7),
        GgufQuantType("q3_k_m", "MOSTLY_Q3_K_M", top1=0.5, kl=0.8),
        GgufQuantType("q3_k_s", "MOSTLY_Q3_K_S", top1=0.45, kl=1.0),
        GgufQuantType("q2_k", "MOSTLY_Q2_K", top1=0.3, kl=2.0),
    )
}
for _name, _entry in GGUF_TYPES.items():
    QUANT.register(f"gguf-{_name}")(_entry)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailableError(
            "GGUF quantization needs llama-cpp-python; install the extra: pip install "
            "'casseat-edge[llama]' (built portably, see scripts/setup.sh)"
        ) from None
    return llama_cpp


def quantize_gguf(
    src: str | Path,
    dst: str | Path,
    quant: str,
    threads: int = 0,
    imatrix: Imatrix | None = None,
    imatrix_name: str = "",
) -> Path:
    """Quantize an f32/f16 GGUF to `quant` with llama.cpp; raises `CasseatError` on failure.

    `imatrix` weighs each block's rounding error per input column (see `imatrix.py`); the file
    then records it as llama-quantize does (`quantize.imatrix.file` = `imatrix_name`, dataset,
    entries and chunk counts), which model hubs read to label imatrix quants."""
    llama_cpp = _llama_cpp()
    entry = GGUF_TYPES[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{entry.ftype}")
    params.nthread = threads
    params.allow_requantize = False
    keep = _pass_imatrix(llama_cpp, params, imatrix, imatrix_name) if imatrix else None
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # llama.cpp logs one line per tensor
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), ctypes.byref(params)
        )
    del keep  # the C arrays had to live until llama.cpp returned
    if status != 0 or not Path(dst).is_file():
        raise CasseatError(
            f"llama.cpp could not quantize {src} to {quant} (status {status}); "
            "try another --quant or export f16"
        )
    return Path(dst)


def _pass_imatrix(llama_cpp: Any, params: Any, imatrix: Imatrix, name: str) -> list[Any]:
    """Point `params` at NULL-terminated C arrays of the imatrix entries and the provenance keys;
    returns what must stay alive while llama.cpp reads them."""
    means = imatrix.means()
    entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    keep: list[Any] = [entries]
    for i, (tensor, values) in enumerate(means.items()):
        values = np.ascontiguousarray(values, dtype=np.float32)
        keep += [values, tensor.encode()]
        entries[i].name = keep[-1]
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    params.imatrix = entries  # entries[len(means)] stays zeroed: the terminator
    keys = [
        ("quantize.imatrix.file", name or "imatrix.gguf"),
        ("quantize.imatrix.dataset", ",".join(imatrix.datasets)[:127]),
        ("quantize.imatrix.entries_count", len(means)),
        ("quantize.imatrix.chunks_count", imatrix.chunks),
    ]
    overrides = (llama_cpp.llama_model_kv_override * (len(keys) + 1))()
    for override, (key, value) in zip(overrides, keys):
        override.key = key.encode()
        if isinstance(value, int):
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            override.value.val_i64 = value
        else:
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            override.value.val_str = value.encode()[:127]
    params.kv_overrides = overrides
    return [*keep, overrides]
