"""GGUF export: our own converter on the `gguf` package plus llama.cpp's quantizer, verified.

Writes, into an export directory: `model-<quant>.gguf` (the text model with its tokenizer and
chat template), `mmproj-<mmproj_quant>.gguf` for vision models (libmtmd's vision encoder +
projector), `imatrix.gguf` when the importance matrix for a quantized type was computed from
Cas-SEAT samples (`--imatrix SYNTH_DIR`, see `imatrix.py`; `--gptq SYNTH_DIR` re-rounds the
q5_0/q4_0 tensors, see `gptq.py`) and `casseat.json` (kind "export", format "gguf", files with
sizes and bits per weight, the calibration used, the parity table, the source hashes).
Verification against PyTorch is on by default; a failing row raises `ParityError` (exit 3) after
the artifact is written.

    from casseat_edge.config import load_config
    from export.gguf import GgufExportConfig, export_gguf
    summary = export_gguf(load_config(GgufExportConfig, overrides={"model": "tiny:smolvlm"}))
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import sha256_file, write_manifest
from casseat_edge.errors import ModelSpecError, UnsupportedArchError
from casseat_edge.exporting import Exporter, publish
from casseat_edge.formats.gguf_header import read_gguf_header
from casseat_edge.locks import DirectoryLock
from casseat_edge.models import ArchSpec, arch_names, load_model, resolve_model
from casseat_edge.registry import EXPORTERS
from export.gguf.config import MMPROJ_QUANTS, TEXT_QUANTS, GgufExportConfig
from export.gguf.gptq import Covariances, gptq_rewrite, gptq_targets, input_covariances
from export.gguf.imatrix import (
    IMATRIX_FILE,
    Imatrix,
    check_imatrix,
    compute_imatrix,
    read_imatrix,
    write_imatrix,
)
from export.gguf.mmproj import has_mmproj, mmproj_spec, write_mmproj
from export.gguf.quantize import GGUF_TYPES, quantize_gguf
from export.gguf.text import has_text_gguf, text_source, write_text_gguf

__all__ = ["GgufExportConfig", "GgufExporter", "export_gguf", "gguf_file_info"]


@EXPORTERS.register("gguf")
class GgufExporter(Exporter):
    """GGUF for llama.cpp: text model (+ mmproj for VLMs), llama.cpp quant types, verified."""

    config_class = GgufExportConfig
    quant_types = TEXT_QUANTS
    mmproj_quant_types = MMPROJ_QUANTS
    tolerances = GGUF_TYPES

    @staticmethod
    def describe() -> dict[str, Any]:
        return {
            "architectures": supported_architectures(),
            "quant": list(TEXT_QUANTS),
            "mmproj_quant": list(MMPROJ_QUANTS),
        }

    @staticmethod
    def export(config: GgufExportConfig) -> dict[str, Any]:
        return export_gguf(config)


def export_gguf(config: GgufExportConfig) -> dict[str, Any]:
    """Convert, quantize, re-read and (unless `verify=False`) verify; returns the summary."""
    with DirectoryLock(config.out):  # one writer per --out: no mixed files marked passed
        return _export_gguf(config)


def _export_gguf(config: GgufExportConfig) -> dict[str, Any]:
    start = time.perf_counter()
    ref = resolve_model(config.model)
    architecture = ref.arch.architecture if ref.arch else None
    supported = supported_architectures()
    if architecture not in supported:
        raise UnsupportedArchError(
            f"{config.model}: GGUF export of {architecture or ref.kind!r} is not supported; "
            f"supported: {', '.join(supported)}"
        )
    if ref.kind == "hf":
        check_source_files(ref.path, vision=ref.arch.vision)
    write = partial(_write_and_verify, ref, config=config, start=start)
    return publish(config, "GGUF", write, _describe_failure)


def _write_and_verify(
    ref: Any, out: Path, *, config: GgufExportConfig, start: float
) -> dict[str, Any]:
    """Every file and the manifest, into `out` (the staging directory)."""
    loaded = load_model(ref)
    text_path, calibration = _write_text(loaded, out, config)
    files = [gguf_file_info(text_path, "text", config.quant)]
    mmproj_path = None
    if ref.arch.vision:
        mmproj_path = write_mmproj(loaded, out / f"mmproj-{config.mmproj_quant}.gguf",
                                   config.mmproj_quant)  # fmt: skip
        files.append(gguf_file_info(mmproj_path, "mmproj", config.mmproj_quant))
    parity = _verify(loaded, text_path, mmproj_path, config) if config.verify else []
    failing = [row for row in parity if not row["passed"]]
    summary = {
        "model": config.model,
        "architecture": ref.arch.architecture,
        "format": "gguf",
        "files": files,
        **calibration,
        "parity": parity,
        "verified": config.verify,
        "passed": not failing if config.verify else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_manifest(out, "export", config.to_dict(), _source_hashes(ref.path), **summary)
    return summary


def check_source_files(path: Path, vision: bool) -> None:
    """One clear error, before any work, for an HF directory the export cannot use: LoRA adapter
    weights that were never merged, or a missing tokenizer / image processor file."""
    weights = [p.name for p in path.glob("*.safetensors")] + [p.name for p in path.glob("*.bin")]
    if (path / "adapter_config.json").is_file() and all(w.startswith("adapter_") for w in weights):
        raise ModelSpecError(
            f"{path} holds a LoRA adapter (adapter_config.json) without merged weights; merge it "
            "first (casseat-edge train --merge, or peft's merge_and_unload) and export the merged "
            "directory"
        )
    needed = ["tokenizer.json"]  # the GGUF embeds the fast (byte-level BPE) tokenizer
    if vision:
        needed.append("preprocessor_config.json")  # image mean/std, sizes for the mmproj
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise ModelSpecError(
            f"{path}: missing {', '.join(missing)}; copy the tokenizer/processor files of the "
            "base model into it (save_pretrained of its tokenizer and processor)"
        )


def exportable(arch: type[ArchSpec]) -> bool:
    """A decoder llama.cpp runs, and for a vision model an mmproj libmtmd loads too."""
    return has_text_gguf(arch) and (not arch.vision or has_mmproj(arch))


def supported_architectures() -> list[str]:
    return arch_names(exportable)


def _write_text(loaded: Any, out: Path, config: GgufExportConfig) -> tuple[Path, dict]:
    """The text GGUF, and what describes its calibration (the imatrix, the GPTQ rewrite)."""
    source = text_source(loaded)
    target = out / f"model-{config.quant}.gguf"
    if config.quant in ("f32", "f16"):
        return write_text_gguf(source, target, config.quant), {"imatrix": None, "gptq": None}
    # llama.cpp quantizes best from full precision; the f32 intermediate is removed afterwards
    tmp = out / ".model-f32.tmp.gguf"
    try:
        write_text_gguf(source, tmp, "f32")
        imatrix, info = _imatrix(loaded, out, config) if config.imatrix else (None, None)
        if imatrix is not None:
            check_imatrix(imatrix, tmp, config.imatrix)
        name = info["file"] if info else ""
        quantize_gguf(tmp, target, config.quant, config.threads, imatrix, name)
        gptq = None
        if config.gptq:  # only the q5_0 / q4_0 tensors llama.cpp made need input covariances
            targets = gptq_targets(target)
            covariances = (
                input_covariances(loaded, config.gptq, config.calibration_samples, names=targets)
                if targets
                else Covariances({}, {}, 0)
            )
            gptq = gptq_rewrite(tmp, target, covariances)
        return target, {"imatrix": info, "gptq": gptq}
    finally:
        tmp.unlink(missing_ok=True)


def _imatrix(loaded: Any, out: Path, config: GgufExportConfig) -> tuple[Imatrix, dict]:
    """Read the --imatrix file, or compute one from the --imatrix samples and save it in --out."""
    given = Path(config.imatrix)
    if given.is_file() and given.suffix != ".jsonl":  # a samples.jsonl, or a directory of one
        imatrix = read_imatrix(given)
        return imatrix, {"source": "file", "file": given.name, **imatrix.describe()}
    computed = compute_imatrix(loaded, given, config.calibration_samples)
    # quantize with what the file holds (float32 sums), so re-using it gives the same bytes
    imatrix = read_imatrix(write_imatrix(computed, out / IMATRIX_FILE))
    return imatrix, {"source": "computed", "file": IMATRIX_FILE, **imatrix.describe()}


def _verify(loaded: Any, text: Path, mmproj: Path | None, config: GgufExportConfig) -> list:
    from export.gguf import verify

    rows = verify.verify_text(loaded, text, config.quant, config.positions, config.threads)
    if mmproj is None:
        return rows
    spec = mmproj_spec(loaded.model)
    side, settings = spec.parity_image(loaded.model, loaded.processor)
    rows += verify.verify_vision(text, mmproj, side, config.threads, settings)
    rows.append(
        verify.verify_image_embeddings(loaded, text, mmproj, config.mmproj_quant, config.threads)
    )
    if spec.same_prompt_layout:
        rows.append(verify.verify_image_logits(loaded, text, mmproj, config.quant, config.threads))
    return rows


def _describe_failure(row: dict[str, Any]) -> str:
    detail = row.get("failures") or row.get("mismatches") or row.get("error") or row
    return f"{row['check']} ({row.get('type', row.get('file', ''))}): {detail}"


def gguf_file_info(path: Path, role: str, quant: str) -> dict[str, Any]:
    """Re-read a written GGUF: size (MB), parameters, bits per weight of the tensor data."""
    tensors = read_gguf_header(path, ()).tensors
    params = sum(t.n_elements for t in tensors)
    data_bytes = sum(t.n_bytes for t in tensors)
    size = path.stat().st_size
    return {
        "file": path.name,
        "role": role,
        "type": quant,
        "tensors": len(tensors),
        "params": params,
        "size_mb": round(size / 1e6, 3),
        "bits_per_weight": round(8 * data_bytes / max(params, 1), 3),
        "sha256": sha256_file(path),
    }


def _source_hashes(path: Path) -> dict[str, str]:
    """sha256 of the source model's config and weight files."""
    names = ["config.json", *sorted(p.name for p in path.glob("*.safetensors"))]
    return {name: sha256_file(path / name) for name in names if (path / name).is_file()}
