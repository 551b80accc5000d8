"""Importance matrices (imatrix) for llama.cpp's quantizer, computed with the PyTorch model.

llama.cpp's K-quant and low-bit block types choose each block's scales to minimise the rounding
error weighted per input column; an importance matrix gives those weights: for every weight
matrix, the mean over calibration tokens of each input column's squared activation (without
one, every column counts the same). It is a diagonal view of the input statistics: on the
Cas-SEAT student it lowered the weighted error of every tensor yet raised the KL to f16 on
held-out solutions; `gptq.py` uses the full covariance (README, "The main job").

llama.cpp's `llama-imatrix` computes the matrix from plain text through llama.cpp; here the
PyTorch source model computes it from Cas-SEAT samples (`casseat-edge synth` output): images,
captions and chat template included, the exact inputs the student sees when deployed. Files use
llama.cpp's GGUF imatrix layout (`general.type` = imatrix, `<tensor>.in_sum2` sums of squares,
`<tensor>.counts` token counts, `imatrix.datasets` / `chunk_count` / `chunk_size`), so
`llama-quantize --imatrix` reads ours and `casseat-edge export --imatrix` reads llama-imatrix's.

    imatrix = compute_imatrix(load_model("student/"), "synth/", limit=64)
    write_imatrix(imatrix, "imatrix.gguf")
    quantize_gguf("model-f32.gguf", "model-q4_k_m.gguf", "q4_k_m", imatrix=read_imatrix(...))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.artifacts import atomic_path, read_jsonl, read_manifest, stable_fraction
from casseat_edge.errors import DataError
from casseat_edge.preprocess import add_caption, count_images, encode, image_inside, load_image

SAMPLES_FILE = "samples.jsonl"
IMATRIX_FILE = "imatrix.gguf"
SUM2, COUNTS = ".in_sum2", ".counts"


@dataclasses.dataclass
class Imatrix:
    """Per GGUF weight name: the sum over calibration tokens of each input column's squared
    activation (float64) and the number of tokens summed."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    datasets: list[str]
    chunks: int  # calibration conversations (llama-imatrix: context-sized chunks of text)
    chunk_size: int  # tokens in the longest conversation

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer reads: mean squared activation per input column (float32)."""
        return {
            name: (self.sums[name] / max(self.counts[name], 1)).astype(np.float32)
            for name in sorted(self.sums)
        }

    def describe(self) -> dict[str, Any]:
        tokens = max(self.counts.values(), default=0)
        return {"entries": len(self.sums), "chunks": self.chunks, "tokens": tokens,
                "datasets": self.datasets}  # fmt: skip


# ------------------------------------------------------------------ computing one
def compute_imatrix(
    loaded: Any,
    data: str | Path,
    limit: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """Run `limit` samples of a Cas-SEAT samples directory through the loaded PyTorch model and
    collect the squared inputs of every text-decoder linear layer under its GGUF name."""
    sums: dict[str, Any] = {}

    def collect(name: str, x: Any) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        sums[name] = sums.get(name, 0) + (x * x).sum(0)

    counts, longest, n = run_calibration(loaded, data, limit, collect, progress)
    return Imatrix(
        sums={k: v.cpu().numpy() for k, v in sums.items()},
        counts=counts,
        datasets=[Path(data).name],
        chunks=n,
        chunk_size=longest,
    )


def run_calibration(
    loaded: Any,
    data: str | Path,
    limit: int,
    collect: Callable[[str, Any], None],
    progress: Callable[[int, int], None] | None = None,
    logits: bool = True,
) -> tuple[dict[str, int], int, int]:
    """Feed `limit` samples through the model; `collect(gguf_name, inputs)` sees the input of
    every decoder linear layer as [tokens, columns] (q/k/v, gate/up: the same tensor object).
    `logits=False`: the output layer runs on the last position only (a sixth of the forward on a
    49k vocabulary; for a caller that does not look at its input). Returns tokens per name, the
    longest conversation and the number of conversations run."""
    import inspect

    import torch

    from casseat_edge.formats.ggml_quant import gguf_linear_names

    conversations = calibration_conversations(data, limit, _trained_with_captions(loaded))
    names = gguf_linear_names(loaded)
    modules = dict(loaded.model.named_modules())
    counts = dict.fromkeys(names.values(), 0)

    def hook(name: str) -> Callable[..., None]:
        def on_forward(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0].detach()
            counts[name] += x.numel() // x.shape[-1]
            collect(name, x)

        return on_forward

    handles = [modules[m].register_forward_hook(hook(g)) for m, g in names.items()]
    last_only = (
        not logits and "logits_to_keep" in inspect.signature(loaded.model.forward).parameters
    )
    longest = 0
    try:
        with torch.inference_mode():
            for done, (messages, image, caption) in enumerate(conversations, 1):
                inputs = encode(loaded.processor, loaded.arch, messages, image, caption, False)
                loaded.model(**inputs, **({"logits_to_keep": 1} if last_only else {}))
                longest = max(longest, int(inputs["input_ids"].shape[1]))
                if progress:
                    progress(done, len(conversations))
    finally:
        for handle in handles:
            handle.remove()
    return counts, longest, len(conversations)


def calibration_conversations(
    data: str | Path, limit: int, captions: bool
) -> list[tuple[list[dict[str, Any]], Any, str | None]]:
    """`limit` conversations (messages, image, caption) of a samples directory, spread over it
    by a stable hash of their ids (not the first rows: synthesis writes problem families in
    order). Images must stay inside the directory."""
    path = Path(data)
    file = path / SAMPLES_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(
            f"{data}: no {SAMPLES_FILE}; --imatrix and --gptq calibrate on a `casseat-edge "
            "synth` output directory (--imatrix also takes an imatrix .gguf)"
        )
    root = file.parent.resolve()
    rows = []
    for lineno, row in read_jsonl(file):
        if not isinstance(row.get("messages"), list) or not row["messages"]:
            raise DataError(f"{file}:{lineno}: messages: missing; expected a Cas-SEAT sample")
        rows.append((stable_fraction(str(row.get("id", lineno))), lineno, row))
    rows.sort(key=lambda item: item[:2])
    out = []
    for _, lineno, row in rows[:limit] if limit else rows:
        messages, image = row["messages"], None
        if count_images(messages):
            image = load_image(image_inside(root, row.get("image"), f"{file}:{lineno}"))
            if captions:
                messages = add_caption(messages, row.get("caption"))
        out.append((messages, image, row.get("caption")))
    if not out:
        raise DataError(f"{file}: no samples to calibrate on")
    return out


def _trained_with_captions(loaded: Any) -> bool:
    """The student's training manifest says whether its prompts carry captions."""
    path = getattr(loaded.ref, "path", None)
    if not loaded.arch.vision or path is None or not (Path(path) / "casseat.json").is_file():
        return False
    return bool(read_manifest(path).get("captions"))


# ------------------------------------------------------------------ the file
def write_imatrix(imatrix: Imatrix, path: str | Path) -> Path:
    """llama.cpp's GGUF imatrix layout, written atomically."""
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="")
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", imatrix.datasets)
        writer.add_uint32("imatrix.chunk_count", imatrix.chunks)
        writer.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
        for name in sorted(imatrix.sums):
            writer.add_tensor(name + SUM2, imatrix.sums[name].astype(np.float32)[None, :])
            writer.add_tensor(name + COUNTS, np.array([[imatrix.counts[name]]], np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def read_imatrix(path: str | Path) -> Imatrix:
    """A GGUF imatrix (ours or llama-imatrix's); one clear error for anything else."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise DataError(
            f"--imatrix {path}: not a GGUF imatrix ({exc}); a legacy .dat converts with "
            "`llama-imatrix --in-file OLD.dat -o imatrix.gguf`"
        ) from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    sums, counts = {}, {}
    for key, values in tensors.items():
        if not key.endswith(SUM2):
            continue
        name = key[: -len(SUM2)]
        count = tensors.get(name + COUNTS)
        if count is None:
            raise DataError(f"--imatrix {path}: {key} has no {name + COUNTS}")
        if count.size != 1 or values.ndim > 1 and values.shape[0] != 1:
            raise DataError(
                f"--imatrix {path}: {name}: {count.size} matrices (mixture of experts); only "
                "dense weights are supported"
            )
        sums[name], counts[name] = values.reshape(-1), int(count.reshape(-1)[0])
    if not sums:
        raise DataError(f"--imatrix {path}: no <tensor>{SUM2} entries; not an imatrix file")
    field = reader.get_field("imatrix.datasets")
    datasets = [str(v) for v in field.contents()] if field is not None else []
    return Imatrix(
        sums=sums,
        counts=counts,
        datasets=datasets,
        chunks=_u32(reader, "imatrix.chunk_count"),
        chunk_size=_u32(reader, "imatrix.chunk_size"),
    )


def _u32(reader: Any, key: str) -> int:
    field = reader.get_field(key)
    return int(field.contents()) if field is not None else 0


def check_imatrix(imatrix: Imatrix, model_gguf: str | Path, source: str) -> None:
    """Every entry that names a tensor of the model must have one value per input column."""
    from casseat_edge.formats.gguf_header import read_gguf_header

    widths = {t.name: t.dims[0] for t in read_gguf_header(model_gguf, ()).tensors}
    known = [name for name in imatrix.sums if name in widths]
    if not known:
        raise DataError(
            f"--imatrix {source}: none of its {len(imatrix.sums)} entries names a tensor of this "
            "model; it was computed for another model"
        )
    for name in sorted(known):
        if imatrix.sums[name].size != widths[name]:
            raise DataError(
                f"--imatrix {source}: {name} has {imatrix.sums[name].size} values but the tensor "
                f"has {widths[name]} input columns; it was computed for another model"
            )
