"""Idefics3 / SmolVLM: a SigLIP vision tower, a pixel-shuffle connector and a Llama text model.

`tiny:smolvlm` is built so llama.cpp's libmtmd accepts it too (ENVIRONMENT.md): 64-px images,
patch 16, a 64-wide 2-layer vision tower, the byte-level BPE SmolLM2 tokenizer plus the Idefics3
special tokens (as special tokens, so image markup tokenizes to single ids everywhere).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from casseat_edge.models.archs import ArchSpec, chatml_template
from casseat_edge.models.text import save_tiny, seeded, tiny_llama_config

IMAGE_TOKEN = "<image>"
IDEFICS3_SPECIAL = [
    "<fake_token_around_image>",
    IMAGE_TOKEN,
    "<global-img>",
    "<end_of_utterance>",
    *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
]
TINY_IMAGE = 64
TINY_PATCH = 16
TINY_SCALE = 2


class Idefics3Arch(ArchSpec):
    """Idefics3 / SmolVLM vision-language model (the demo student's architecture)."""

    architecture = "Idefics3ForConditionalGeneration"
    family = "idefics3"
    model_type = "idefics3"
    vision = True
    auto_class = "AutoModelForImageTextToText"
    summary = "Idefics3 / SmolVLM (SigLIP + pixel shuffle + Llama)"
    tiny_name = "smolvlm"
    aliases = ("SmolVLMForConditionalGeneration",)
    image_text = IMAGE_TOKEN
    # texts llama.cpp's libmtmd looks up as single tokens around an Idefics3 image: a vocabulary
    # subset must keep them whole (see casseat_edge.models.tokenizer.subset_tokenizer)
    single_token_texts = ("\n\n", "\n")

    @classmethod
    def load_processor(cls, model_dir: Path) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(model_dir)

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        _build(out, tokenizer_dir, seed, TINY_IMAGE, TINY_PATCH, TINY_SCALE, vision, {})

    @classmethod
    def build_student(cls, out: Path, tokenizer_dir: Path, seed: int, preset: str) -> None:
        """The demo student (`student:<preset>`): an untrained seeded model sized to be trained
        fully on CPU in minutes (see `STUDENT_PRESETS`)."""
        size = STUDENT_PRESETS[preset]
        vision = dict(
            hidden_size=size.vision_hidden,
            intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers,
        )
        text = dict(
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=2048,
        )
        _build(
            out, tokenizer_dir, seed, size.image, size.patch, 2, vision, text, f"student:{preset}"
        )


@dataclasses.dataclass(frozen=True)
class StudentSize:
    """The sizes of a `student:` preset (text model, vision tower, image side)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    image: int  # longest image side the processor resizes to (one global image, no splitting)
    patch: int
    vision_hidden: int
    vision_layers: int

    @property
    def image_tokens(self) -> int:
        return (self.image // self.patch) ** 2 // 4  # pixel shuffle, scale 2


# 12.2M parameters, 9.4M of them the tied 49k-token embedding / output layer, which dominates a
# training step at this width (hence training/sft/loss.py); `train_student` therefore rebuilds it
# over the ~1.3k SmolLM2 tokens its training texts use (3.0M parameters, 2x faster steps).
# 64-px images give 4 image tokens.
STUDENT_PRESETS: dict[str, StudentSize] = {
    "smolvlm": StudentSize(
        hidden=192,
        intermediate=512,
        layers=6,
        heads=4,
        kv_heads=2,
        image=64,
        patch=16,
        vision_hidden=96,
        vision_layers=2,
    ),
}


def _build(
    out: Path,
    tokenizer_dir: Path,
    seed: int,
    image: int,
    patch: int,
    scale: int,
    vision: dict[str, int],
    text: dict[str, Any],
    source: str | None = None,
) -> None:
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": IDEFICS3_SPECIAL}, replace_additional_special_tokens=False
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": image},
        max_image_size={"longest_edge": image},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor,
        tokenizer,
        image_seq_len=(image // patch) ** 2 // scale**2,
        chat_template=chatml_template(IMAGE_TOKEN),
    )
    config = Idefics3Config(
        text_config=tiny_llama_config(tokenizer, **text).to_dict(),
        vision_config=dict(
            **vision,
            num_attention_heads=2,
            image_size=image,
            patch_size=patch,
        ),
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=True,
        architectures=[Idefics3Arch.architecture],
    )
    seeded(seed)
    model = Idefics3ForConditionalGeneration(config)
    save_tiny(out, model, processor, Idefics3Arch, seed, source)
