"""Idefics3 / SmolVLM: a SigLIP vision tower, a pixel-shuffle connector and a Llama text model.

`tiny:smolvlm` is built so llama.cpp's libmtmd accepts it too (ENVIRONMENT.md): 64-px images,
patch 16, a 64-wide 2-layer vision tower, the byte-level BPE SmolLM2 tokenizer plus the Idefics3
special tokens (as special tokens, so image markup tokenizes to single ids everywhere).
"""

from __future__ import annotations

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

    @classmethod
    def load_processor(cls, model_dir: Path) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(model_dir)

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
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
            size={"longest_edge": TINY_IMAGE},
            max_image_size={"longest_edge": TINY_IMAGE},
            do_image_splitting=False,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        seq_len = (TINY_IMAGE // TINY_PATCH) ** 2 // TINY_SCALE**2
        processor = Idefics3Processor(
            image_processor,
            tokenizer,
            image_seq_len=seq_len,
            chat_template=chatml_template(IMAGE_TOKEN),
        )
        config = Idefics3Config(
            text_config=tiny_llama_config(tokenizer).to_dict(),
            vision_config=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=TINY_IMAGE,
                patch_size=TINY_PATCH,
            ),
            scale_factor=TINY_SCALE,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            tie_word_embeddings=True,
            architectures=[cls.architecture],
        )
        seeded(seed)
        save_tiny(out, Idefics3ForConditionalGeneration(config), processor, cls, seed)
