"""Models: specs (`embedded:`, `tiny:`, paths), the supported-architecture registry and loading.

from casseat_edge.models import resolve_model, load_model
loaded = load_model("tiny:smolvlm")
"""

from __future__ import annotations

from casseat_edge.models.archs import ArchSpec, arch_for_config, arch_names, supported_arch
from casseat_edge.models.embedded import embedded_gguf, embedded_hf_dir, embedded_tokenizer_dir
from casseat_edge.models.specs import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelRef,
    find_mmproj,
    load_model,
    resolve_model,
    tiny_names,
)

__all__ = [
    "DEFAULT_MODEL",
    "ArchSpec",
    "LoadedModel",
    "ModelRef",
    "arch_for_config",
    "arch_names",
    "embedded_gguf",
    "embedded_hf_dir",
    "embedded_tokenizer_dir",
    "find_mmproj",
    "load_model",
    "resolve_model",
    "supported_arch",
    "tiny_names",
]
