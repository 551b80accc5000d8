"""Supported architectures: one declarative entry per HF `architectures` value.

An entry says what varies per family (HF model_type, whether it sees images, how an image is
written into the prompt text, the auto class to load it with, the tiny config and processor to
build for tests) and the structural facts every stage reads instead of keeping its own table:
where the vision tower, connector and text decoder live (training's parts, bitsandbytes' float
modules, the exporters' decoder), the decoder's llama.cpp architecture, the mmproj projector
type and the ONNX vision graph. Stage packages look these up (`arch_for_config`, `ARCHS.get`)
and key their implementation classes by the short names given here, never by HF architecture.
Dispatch is on the HF `architectures[0]` value (falling back to `model_type`), never on
substrings of names. An entry missing a required attribute fails at import.

Family modules (`idefics3.py`, `qwen2vl.py`, `text.py`) register their entries on import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from casseat_edge.errors import UnsupportedArchError
from casseat_edge.registry import ARCHS

REQUIRED_ATTRS = (
    "architecture",
    "family",
    "model_type",
    "vision",
    "auto_class",
    "summary",
    "text_prefix",
)


class ArchSpec:
    """Base of the architecture entries. Subclasses set the class attributes below."""

    architecture: ClassVar[str]
    family: ClassVar[str]
    model_type: ClassVar[str]
    vision: ClassVar[bool]
    auto_class: ClassVar[str]  # transformers auto class name used to load it
    summary: ClassVar[str]
    tiny_name: ClassVar[str | None] = None  # the `tiny:<name>` spec that builds one
    aliases: ClassVar[tuple[str, ...]] = ()
    image_text: ClassVar[str | None] = None  # what an image content part becomes in prompt text
    single_token_texts: ClassVar[tuple[str, ...]] = ()  # llama.cpp needs these as one token each
    # training may pack samples into one row (position ids restarting per sample, no attention
    # mask: transformers then keeps attention within each sample)
    packable: ClassVar[bool] = True

    # --- structure: module names inside the HF model (`model.named_modules()` / state-dict keys
    # without the trailing `.weight`); a name belongs to the part of its longest matching prefix
    # (Qwen2-VL's merger, the connector, sits inside its vision module)
    vision_prefixes: ClassVar[tuple[str, ...]] = ()  # the image encoder
    connector_prefixes: ClassVar[tuple[str, ...]] = ()  # vision-to-text projection
    text_prefix: ClassVar[str]  # the text decoder (embeddings, layers, final norm)
    lm_head: ClassVar[str] = "lm_head"  # the output projection; part `lm` with the decoder

    # --- llama.cpp (GGUF export); gguf_arch None: no GGUF export
    gguf_arch: ClassVar[str | None] = None  # `gguf.MODEL_ARCH` member name of the text decoder
    # llama.cpp's rope for this arch rotates adjacent pairs where HF rotates halves: permute q/k
    gguf_permute_qk: ClassVar[bool] = False
    mrope: ClassVar[bool] = False  # multimodal rope: 3 position rows (time, height, width)
    # libmtmd's `clip.projector_type` of the vision encoder + connector (None: text only, or
    # no mmproj export); export.gguf.mmproj keys its writers by it
    mmproj_projector: ClassVar[str | None] = None
    # the token the HF processor repeats once per image embedding (libmtmd splices the image
    # embeddings where the text model's vocabulary has it); None: text only
    image_token: ClassVar[str | None] = None

    # --- ONNX: the vision-encoder graph (export.onnx.graphs keys the graphs, and with them
    # their input names, by it). None: text only; a vision arch without one has no ONNX export
    onnx_vision: ClassVar[str | None] = None

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        missing = [a for a in REQUIRED_ATTRS if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"{cls.__name__} is missing {', '.join(missing)}")
        if cls.vision and (cls.image_text is None or cls.image_token is None):
            raise TypeError(f"{cls.__name__} sees images but sets no image_text / image_token")
        if not cls.vision and (cls.vision_prefixes or cls.connector_prefixes):
            raise TypeError(f"{cls.__name__} sees no images but names vision/connector modules")
        if not cls.vision and (cls.mmproj_projector or cls.onnx_vision or cls.image_token):
            raise TypeError(f"{cls.__name__} sees no images but names a projector/vision graph")
        ARCHS.register(cls.architecture, *cls.aliases)(cls)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "family": cls.family,
            "model_type": cls.model_type,
            "vision": cls.vision,
            "tiny": f"tiny:{cls.tiny_name}" if cls.tiny_name else None,
            "summary": cls.summary,
        }

    @classmethod
    def parts(cls) -> dict[str, tuple[str, ...]]:
        """Module-name prefixes of the `vision`, `connector` and `lm` parts (longest wins)."""
        return {
            "vision": cls.vision_prefixes,
            "connector": cls.connector_prefixes,
            "lm": (cls.text_prefix, cls.lm_head),
        }

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The HF `architectures` values this entry answers to (its own, then its aliases)."""
        return (cls.architecture, *cls.aliases)

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        """Write a seeded random model of this architecture (+ tokenizer/processor) into `out`."""
        raise NotImplementedError(f"{cls.architecture} has no tiny builder")

    @classmethod
    def load_processor(cls, model_dir: Path) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir)


def chatml_template(image_text: str | None) -> str:
    """Our ChatML chat template; content may be a string or a list of {type: text|image} parts.

    Image parts become `image_text` (the placeholder the family's processor expands)."""
    image = image_text or ""
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image + "' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def arch_for_config(config: dict[str, Any], where: str = "config.json") -> type[ArchSpec]:
    """The registered entry for an HF config dict (by `architectures[0]`, else `model_type`)."""
    names = list(config.get("architectures") or [])
    for name in names[:1]:
        if name in ARCHS:
            return ARCHS.get(name)
    for _, entry in ARCHS.items():
        if entry.model_type == config.get("model_type"):
            return entry
    found = names[0] if names else config.get("model_type")
    raise UnsupportedArchError(
        f"{where}: architecture {found!r} is not supported; supported: {', '.join(ARCHS.names())}"
    )


def arch_names(accept: Callable[[type[ArchSpec]], bool] = lambda arch: True) -> list[str]:
    """Sorted HF architecture names (aliases included) of the entries `accept` holds true for:
    what a stage lists as supported."""
    return sorted(name for _, arch in ARCHS.items() if accept(arch) for name in arch.names())


def supported_arch(
    name: str | None,
    what: str,
    accept: Callable[[type[ArchSpec]], bool] = lambda arch: True,
) -> type[ArchSpec]:
    """The entry for HF architecture `name` (an alias too) when `accept` holds for it; otherwise
    UnsupportedArchError "<what> of 'name' is not supported; supported: <accepted names>"."""
    arch = ARCHS.get(name) if name is not None and name in ARCHS else None
    if arch is None or not accept(arch):
        raise UnsupportedArchError(
            f"{what} of {name!r} is not supported; supported: {', '.join(arch_names(accept))}"
        )
    return arch


def _register_families() -> None:
    from casseat_edge.models import idefics3, qwen2vl, text  # noqa: F401


_register_families()
