"""ONNX export in the layout onnx-community / transformers.js use, verified in onnxruntime.

Writes, into an export directory (layout: `casseat_edge.formats.onnx_split`): for text-only models the
merged `onnx/model.onnx`, for VLMs `onnx/vision_encoder.onnx`, `onnx/embed_tokens.onnx` and
`onnx/decoder_model_merged.onnx`; the quantized variants asked for under transformers.js' dtype
suffixes (decoder or merged model `_int8` / `_q4`: onnxruntime's MatMulNBits 8 / 4 bits; vision
encoder, embeddings and the merged model's embedding table: its dynamic int8, shared by both);
the model's `config.json`, generation config and processor files with the chat template in
`tokenizer_config.json` (where transformers.js reads it), and `casseat.json` (kind "export",
format "onnx", the files of each variant with sizes and bits per weight, the transformers.js
dtype that loads each variant, the parity table, the source hashes). Verification against PyTorch is on by default; a failing row raises
`ParityError` (exit 3) after the artifact is written. The onnxruntime backend serves the directory.

    from casseat_edge.config import load_config
    from export.onnx import OnnxExportConfig, export_onnx
    summary = export_onnx(load_config(OnnxExportConfig, overrides={"model": "tiny:smolvlm",
                                                                   "quant": ("fp32", "int4")}))
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import sha256_file, write_manifest
from casseat_edge.exporting import Exporter, publish
from casseat_edge.formats.onnx_split import (
    DECODER,
    DECODERS,
    EMBED,
    MODEL,
    VISION,
    part_dtype,
    part_file,
    parts_for,
)
from casseat_edge.locks import DirectoryLock
from casseat_edge.models import load_model, resolve_model
from casseat_edge.registry import EXPORTERS
from export.onnx.config import ONNX_QUANTS, OnnxExportConfig
from export.onnx.graphs import (
    export_decoder,
    export_embed,
    export_vision,
    family_for,
    onnx_architectures,
)
from export.onnx.quantize import (
    ONNX_TYPES,
    float_params,
    onnx_file_info,
    quantize_int8,
    quantize_nbits,
)

__all__ = ["OnnxExportConfig", "OnnxExporter", "export_onnx"]


@EXPORTERS.register("onnx")
class OnnxExporter(Exporter):
    """transformers.js-layout ONNX (model, or vision_encoder / embed_tokens /
    decoder_model_merged), fp32/int8/int4, verified."""

    config_class = OnnxExportConfig
    quant_types = ONNX_QUANTS
    tolerances = ONNX_TYPES

    @staticmethod
    def describe() -> dict[str, Any]:
        return {"architectures": onnx_architectures(), "quant": list(ONNX_QUANTS)}

    @staticmethod
    def export(config: OnnxExportConfig) -> dict[str, Any]:
        return export_onnx(config)


def export_onnx(config: OnnxExportConfig) -> dict[str, Any]:
    """Trace, quantize, verify (unless `verify=False`) and write the manifest; the summary."""
    with DirectoryLock(config.out):  # one writer per --out: no mixed files marked passed
        return _export_onnx(config)


def _export_onnx(config: OnnxExportConfig) -> dict[str, Any]:
    start = time.perf_counter()
    ref = resolve_model(config.model)
    family = family_for(ref.arch.architecture if ref.arch else None)
    write = partial(_write_and_verify, ref, family, config=config, start=start)
    return publish(config, "ONNX", write, _describe_failure)


def _describe_failure(row: dict[str, Any]) -> str:
    return f"{row['check']} ({row.get('type')}): {row.get('failures')}"


def _write_and_verify(
    ref: Any, family: Any, out: Path, *, config: OnnxExportConfig, start: float
) -> dict[str, Any]:
    """Every file and the manifest, into `out` (the staging directory)."""
    loaded = load_model(ref)
    info = _write_fp32(loaded, family, out, config.opset)
    params = {part: float_params(out / part_file(part, "fp32")) for part in _parts(family)}
    variants = {q: {p: part_file(p, q) for p in _parts(family)} for q in config.quant}
    _quantize(out, variants, config.block_size)
    if "fp32" not in config.quant:  # the fp32 graphs were only the quantizers' input
        for part in params:
            (out / part_file(part, "fp32")).unlink()
    _save_model_files(loaded, out)
    dtypes = {q: {p: part_dtype(p, q) for p in parts} for q, parts in variants.items()}
    onnx_info = {**info, **_token_info(loaded.model.config), "variants": variants,
                 "transformers_js_dtype": dtypes}  # fmt: skip
    files = _file_rows(out, variants, params)
    summary = {
        "model": config.model, "architecture": family.architecture,
        "format": "onnx", "files": files, "variants": _variant_rows(variants, files),
        "parity": [], "verified": config.verify, "passed": None,
    }  # fmt: skip
    _manifest(out, config, ref.path, summary, onnx_info)  # the verifier reads it
    if config.verify:
        summary["parity"] = _verify(loaded, out, config)
        summary["passed"] = all(row["passed"] for row in summary["parity"])
    summary["seconds"] = round(time.perf_counter() - start, 2)
    _manifest(out, config, ref.path, summary, onnx_info)
    return summary


def _parts(family: Any) -> list[str]:
    return parts_for(family.vision is not None)


def _write_fp32(loaded: Any, family: Any, out: Path, opset: int) -> dict[str, Any]:
    model = loaded.model
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")  # one plain attention graph (see graphs.py)
    try:
        if family.vision is None:
            info = export_decoder(model, family, out / part_file(MODEL, "fp32"), opset, True)
            return {"architecture": family.architecture, "opset": opset, **info}
        info = export_decoder(model, family, out / part_file(DECODER, "fp32"), opset)
        export_embed(model, out / part_file(EMBED, "fp32"), opset)
        export_vision(model, family, out / part_file(VISION, "fp32"), opset)
    finally:
        model.set_attn_implementation(attention)
    return {"architecture": family.architecture, "opset": opset, **info}


def _quantize(out: Path, variants: dict[str, dict[str, str]], block_size: int) -> None:
    done: set[str] = set()
    for quant, parts in variants.items():
        for part, name in parts.items():
            if quant == "fp32" or name in done:
                continue
            src, dst = out / part_file(part, "fp32"), out / name
            if part in DECODERS:
                quantize_nbits(src, dst, 8 if quant == "int8" else 4, block_size)
                if part == MODEL:  # its embedding table, as the split embed_tokens is
                    quantize_int8(dst, dst, ("Gather",))
            else:
                quantize_int8(src, dst, ("Gather",) if part == EMBED else ("MatMul",))
            done.add(name)


def _token_info(config: Any) -> dict[str, Any]:
    vision = getattr(config, "vision_config", None)
    keys = ("image_token_id", "vision_start_token_id")
    info = {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}
    if vision is not None and getattr(vision, "spatial_merge_size", None):
        info["spatial_merge_size"] = vision.spatial_merge_size
    return info


def _save_model_files(loaded: Any, out: Path) -> None:
    """config.json, generation_config.json and the processor/tokenizer, as transformers.js reads
    them: it takes the chat template from tokenizer_config.json only (transformers saves it to
    chat_template.jinja / processor files), so it is written there too."""
    loaded.model.config.save_pretrained(out)
    loaded.model.generation_config.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    template = getattr(loaded.processor, "chat_template", None) or loaded.tokenizer.chat_template
    if template:
        path = out / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config["chat_template"] = template
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _file_rows(out: Path, variants: dict, params: dict[str, int]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for quant, parts in variants.items():
        for part, name in parts.items():
            kind = quant if part in DECODERS or quant == "fp32" else "int8"
            rows.setdefault(name, onnx_file_info(out, name, part, kind, params[part]))
    return list(rows.values())


def _variant_rows(variants: dict, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: the files it loads, their total size and bits per weight."""
    by_name = {f["file"]: f for f in files}
    rows = []
    for quant, parts in variants.items():
        picked = [by_name[name] for name in parts.values()]
        size = sum(f["size_mb"] for f in picked)
        params = sum(f["params"] for f in picked)
        rows.append({"quant": quant, "files": list(parts.values()), "size_mb": round(size, 3),
                     "bits_per_weight": round(8e6 * size / max(params, 1), 3)})  # fmt: skip
    return rows


def _verify(loaded: Any, out: Path, config: OnnxExportConfig) -> list[dict[str, Any]]:
    from export.onnx.verify import verify_variant

    rows = []
    for quant in config.quant:
        rows += verify_variant(loaded, out, quant, config.positions, config.threads)
    return rows


def _manifest(out: Path, config: Any, source: Path, summary: dict, onnx_info: dict) -> None:
    write_manifest(out, "export", config.to_dict(), _source_hashes(source), onnx=onnx_info,
                   **summary)  # fmt: skip


def _source_hashes(path: Path) -> dict[str, str]:
    names = ["config.json", *sorted(p.name for p in path.glob("*.safetensors"))]
    return {name: sha256_file(path / name) for name in names if (path / name).is_file()}
