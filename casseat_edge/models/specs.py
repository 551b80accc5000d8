"""Model specs, accepted wherever a model is asked for:

- a path: an HF model directory, a `.gguf` file (its `mmproj-*.gguf` sibling found
  automatically) or an export directory with `casseat.json`;
- `embedded:smollm2-135m-instruct`: the real SmolLM2 packaged in a PyPI wheel (offline default);
- `tiny:<arch>[@seed]`: a seeded random model of a real architecture, built once and cached;
- `student:<preset>[@seed]`: the untrained student (an Idefics3 / SmolVLM: `smollm2` with the
  packaged SmolLM2 as its text model, `smolvlm` sized to be trained from scratch on CPU in
  minutes; `training.sft.student` trains it), built once and cached.

    ref = resolve_model("tiny:smolvlm")
    loaded = load_model(ref)            # transformers model + processor, eval mode
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import MANIFEST, read_manifest, write_json_atomic
from casseat_edge.errors import ModelSpecError
from casseat_edge.models.archs import ArchSpec, arch_for_config
from casseat_edge.models.embedded import (
    EMBEDDED,
    embedded_gguf,
    embedded_hf_dir,
    embedded_tokenizer_dir,
)
from casseat_edge.models.store import casseat_home, materialize
from casseat_edge.preprocess import processor_tokenizer
from casseat_edge.registry import ARCHS

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
TINY_BUILDER_VERSION = "4"  # bump when a tiny config changes: cached tiny models are rebuilt
STUDENT_BUILDER_VERSION = "3"  # likewise for `student:` presets (their sizes are hashed too)


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A resolved model spec: where its files are and what architecture it is."""

    spec: str
    kind: str  # hf | gguf | export | embedded | tiny | student
    path: Path  # HF directory, .gguf file or export directory
    arch: type[ArchSpec] | None
    gguf: Path | None = None
    mmproj: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "path": str(self.path),
            "architecture": self.arch.architecture if self.arch else None,
            "gguf": str(self.gguf) if self.gguf else None,
            "mmproj": str(self.mmproj) if self.mmproj else None,
        }


@dataclasses.dataclass
class LoadedModel:
    """A transformers model with its processor (or tokenizer for text-only models)."""

    model: Any
    processor: Any
    arch: type[ArchSpec]
    ref: ModelRef

    @property
    def tokenizer(self) -> Any:
        return processor_tokenizer(self.processor)


def tiny_names() -> dict[str, type[ArchSpec]]:
    return {e.tiny_name: e for _, e in ARCHS.items() if e.tiny_name}


def resolve_model(spec: str | Path) -> ModelRef:
    text = str(spec)
    if text.startswith("embedded:"):
        return _resolve_embedded(text)
    if text.startswith("tiny:"):
        return _resolve_tiny(text)
    if text.startswith("student:"):
        return _resolve_student(text)
    return _resolve_path(text)


def _resolve_embedded(spec: str) -> ModelRef:
    name = spec.split(":", 1)[1]
    if name not in EMBEDDED:
        raise ModelSpecError(
            f"unknown model spec {spec!r}; embedded models: "
            + ", ".join("embedded:" + n for n in EMBEDDED)
        )
    hf_dir = embedded_hf_dir(name)
    return ModelRef(
        spec, "embedded", hf_dir, ARCHS.get("LlamaForCausalLM"), gguf=embedded_gguf(name)
    )


def _resolve_tiny(spec: str) -> ModelRef:
    name, _, seed_text = spec.split(":", 1)[1].partition("@")
    tinies = tiny_names()
    if name not in tinies:
        raise ModelSpecError(
            f"unknown model spec {spec!r}; tiny models: {', '.join('tiny:' + n for n in sorted(tinies))}"
        )
    if seed_text and not seed_text.isdigit():
        raise ModelSpecError(f"model spec {spec!r}: the seed after '@' must be an integer")
    seed = int(seed_text or 0)
    arch = tinies[name]
    tok_dir = embedded_tokenizer_dir()
    target = casseat_home() / "tiny" / f"{name}-seed{seed}"
    inputs = {
        "tokenizer": read_manifest(tok_dir)["inputs"]["gguf"],
        "builder": TINY_BUILDER_VERSION,
        "transformers": _transformers_version(),
    }

    def build(tmp: Path) -> None:
        arch.build_tiny(tmp, tok_dir, seed)
        manifest = read_manifest(tmp)
        write_json_atomic(tmp / MANIFEST, {**manifest, "inputs": inputs})

    path = materialize(target, build, inputs)
    return ModelRef(spec, "tiny", path, arch)


def _resolve_student(spec: str) -> ModelRef:
    """`student:<preset>[@seed]`: the untrained demo student (Idefics3), built once and cached."""
    from casseat_edge.models.idefics3 import STUDENT_PRESETS, Idefics3Arch

    name, _, seed_text = spec.split(":", 1)[1].partition("@")
    if name not in STUDENT_PRESETS:
        raise ModelSpecError(
            f"unknown model spec {spec!r}; student presets: "
            + ", ".join("student:" + n for n in STUDENT_PRESETS)
        )
    if seed_text and not seed_text.isdigit():
        raise ModelSpecError(f"model spec {spec!r}: the seed after '@' must be an integer")
    seed = int(seed_text or 0)
    tok_dir = embedded_tokenizer_dir()
    inputs = {
        "tokenizer": read_manifest(tok_dir)["inputs"]["gguf"],
        "builder": STUDENT_BUILDER_VERSION,
        "preset": json.dumps(dataclasses.asdict(STUDENT_PRESETS[name]), sort_keys=True),
        "transformers": _transformers_version(),
    }

    def build(tmp: Path) -> None:
        Idefics3Arch.build_student(tmp, tok_dir, seed, name)
        manifest = read_manifest(tmp)
        write_json_atomic(tmp / MANIFEST, {**manifest, "inputs": inputs})

    path = materialize(casseat_home() / "student" / f"{name}-seed{seed}", build, inputs)
    return ModelRef(spec, "student", path, Idefics3Arch)


def _resolve_path(spec: str) -> ModelRef:
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelSpecError(
            f"model spec {spec!r}: no such file or directory; expected an HF model directory, a .gguf "
            f"file, an export directory, {DEFAULT_MODEL}, student:<smollm2|smolvlm> or "
            f"tiny:<{'|'.join(sorted(tiny_names()))}>"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSpecError(f"{path}: not a .gguf file or a model directory")
        return ModelRef(spec, "gguf", path, None, gguf=path, mmproj=find_mmproj(path))
    if (path / MANIFEST).is_file() and (path / "config.json").is_file() and _is_export(path):
        # an ONNX export carries the model's config.json (transformers.js layout): no weights
        arch = arch_for_config(_read_config(path), str(path / "config.json"))
        return ModelRef(spec, "export", path, arch)
    if (path / "config.json").is_file():
        return ModelRef(
            spec, "hf", path, arch_for_config(_read_config(path), str(path / "config.json"))
        )
    if (path / MANIFEST).is_file():
        return ModelRef(spec, "export", path, None)
    if (path / "adapter_config.json").is_file():
        raise ModelSpecError(
            f"{path} is a LoRA adapter directory, not a model; merge it first "
            "(casseat-edge train --merge) or pass the base model"
        )
    raise ModelSpecError(f"{path}: no config.json or {MANIFEST}; not a model directory")


def _is_export(path: Path) -> bool:
    try:
        return read_manifest(path).get("kind") == "export"
    except Exception:  # noqa: BLE001 - an unreadable manifest: not an export directory
        return False


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{path / 'config.json'}: malformed JSON ({exc.msg})") from None


def find_mmproj(gguf: Path) -> Path | None:
    """The `mmproj*.gguf` next to a text GGUF: the one sharing its stem, else the only one."""
    candidates = sorted(p for p in gguf.parent.glob("mmproj*.gguf") if p != gguf)
    for cand in candidates:
        if gguf.stem in cand.stem:
            return cand
    return candidates[0] if len(candidates) == 1 else None


def load_model(
    spec: str | Path | ModelRef, dtype: str = "float32", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a resolved spec in transformers (eval mode). GGUF files need the llama.cpp backend."""
    import torch
    import transformers

    ref = spec if isinstance(spec, ModelRef) else resolve_model(spec)
    if ref.kind in ("gguf", "export") or ref.arch is None:
        raise ModelSpecError(
            f"{ref.spec}: a {ref.kind} artifact cannot be loaded in transformers; "
            "use it with --backend llama.cpp or onnxruntime, or pass the HF source directory"
        )
    from safetensors import SafetensorError

    auto = getattr(transformers, ref.arch.auto_class)
    try:
        model = auto.from_pretrained(
            ref.path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except SafetensorError as exc:
        raise _weights_error(Path(ref.path), exc) from None
    model.eval()
    return LoadedModel(model, ref.arch.load_processor(ref.path), ref.arch, ref)


def _weights_error(path: Path, exc: Exception) -> ModelSpecError:
    """Name the weights file safetensors cannot read (truncated download, random bytes)."""
    from safetensors import SafetensorError, safe_open

    bad, reason = path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError as error:
            bad, reason = file, str(error).splitlines()[0]
            break
    return ModelSpecError(
        f"{bad}: not a readable safetensors file ({reason}); the file is truncated or corrupt: "
        "download or save the model again"
    )
