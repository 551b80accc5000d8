"""F32 exports of the tiny models (GGUF + mmproj, ONNX), shared by the runtime tests.

Exported once per test session into $CASSEAT_HOME (a per-session temp dir, or $CASSEAT_TEST_HOME),
without the exporters' own verification (test_export_gguf.py and the ONNX export tests cover it):
the runtime tests compare the backends against torch themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from casseat_edge.models import find_mmproj


def _out(model: str, kind: str) -> Path:
    return Path(os.environ["CASSEAT_HOME"]) / "test-exports" / f"{model.replace(':', '_')}-{kind}"


def exported_gguf(model: str, quant: str = "f32") -> tuple[Path, Path | None]:
    """(text GGUF, mmproj or None) of `model` at `quant` (the mmproj in f32)."""
    from casseat_edge.config import load_config
    from export.gguf import GgufExportConfig, export_gguf

    out = _out(model, f"gguf-{quant}")
    text = out / f"model-{quant}.gguf"
    if not (out / "casseat.json").is_file():
        values = {"model": model, "out": str(out), "quant": quant, "mmproj_quant": "f32",
                  "verify": False, "overwrite": True}  # fmt: skip
        export_gguf(load_config(GgufExportConfig, overrides=values))
    return text, find_mmproj(text)


def exported_onnx(model: str) -> Path:
    """The fp32 ONNX export directory of `model`."""
    from casseat_edge.config import load_config
    from export.onnx import OnnxExportConfig, export_onnx

    out = _out(model, "onnx-fp32")
    if not (out / "casseat.json").is_file():
        values = {"model": model, "out": str(out), "quant": ("fp32",), "verify": False,
                  "overwrite": True}  # fmt: skip
        export_onnx(load_config(OnnxExportConfig, overrides=values))
    return out
