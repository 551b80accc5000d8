"""Supported architectures: one declarative entry per HF `architectures` value.

An entry says what varies per family (HF model_type, whether it sees images, how an image is
written into the prompt text, the auto class to load it with, the tiny config and processor to
build for tests). Dispatch is on the HF `architectures[0]` value (falling back to `model_type`),
never on substrings of names. An entry missing a required attribute fails at import.

Family modules (`idefics3.py`, `qwen2vl.py`, `text.py`) register their entries on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from casseat_edge.errors import UnsupportedArchError
from casseat_edge.registry import ARCHS

REQUIRED_ATTRS = ("architecture", "family", "model_type", "vision", "auto_class", "summary")


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

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        missing = [a for a in REQUIRED_ATTRS if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"{cls.__name__} is missing {', '.join(missing)}")
        if cls.vision and cls.image_text is None:
            raise TypeError(f"{cls.__name__} sees images but sets no image_text")
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


def _register_families() -> None:
    from casseat_edge.models import idefics3, qwen2vl, text  # noqa: F401


_register_families()
