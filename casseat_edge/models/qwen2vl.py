"""Qwen2-VL and Qwen2.5-VL: a ViT with 2x2 patch merging feeding a Qwen2 decoder with M-RoPE.

`tiny:qwen2vl` / `tiny:qwen2.5vl` keep the shapes llama.cpp's `qwen2vl_merger` / `qwen2.5vl_merger`
projectors need (patch 14, temporal patch 2, spatial merge 2; M-RoPE sections summing to half the
head dim) with the SmolLM2 tokenizer plus Qwen's vision special tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from casseat_edge.models.archs import ArchSpec, chatml_template
from casseat_edge.models.text import save_tiny, seeded

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IMAGE_TEXT = "<|vision_start|><|image_pad|><|vision_end|>"
TINY_MAX_PIXELS = 112 * 112  # -> at most 8x8 patches of 14 px -> 16 merged image tokens


def _tiny_tokenizer(tokenizer_dir: Path) -> Any:
    """The SmolLM2 BPE wrapped in the tokenizer class Qwen2VLProcessor insists on."""
    from transformers import AutoTokenizer, Qwen2TokenizerFast

    base = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token=base.bos_token,
        eos_token=base.eos_token,
        unk_token=base.unk_token,
        pad_token=base.pad_token,
        additional_special_tokens=base.additional_special_tokens,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": VISION_TOKENS}, replace_additional_special_tokens=False
    )
    return tokenizer


def _tiny_text_config(tokenizer: Any) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2 = 8
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _token_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


@functools.cache
def image_only_processor_class() -> type:
    """Qwen2VLProcessor without its video processor, which needs torchvision (there is no CPU
    torchvision wheel here) and which the toolkit never uses: image tensors are identical."""
    from transformers import Qwen2VLProcessor

    class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

        def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
            if name == "video_processor":
                return None
            return super().check_argument_for_proper_class(name, arg)

    return Qwen2VLImageProcessorOnly


def _processor(tokenizer: Any) -> Any:
    from transformers import Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56,
        max_pixels=TINY_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return image_only_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chatml_template(IMAGE_TEXT),
    )


def _saved_template(model_dir: Path) -> str | None:
    import json

    for name in ("chat_template.jinja", "chat_template.json"):
        path = model_dir / name
        if path.is_file():
            text = path.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


class _QwenVLBase(ArchSpec, abstract=True):
    vision = True
    auto_class = "AutoModelForImageTextToText"
    image_text = IMAGE_TEXT
    packable = False  # M-RoPE: 3-row position ids the model computes itself
    # ViT whose 2x2 patch merger (the connector) sits inside it -> Qwen2 decoder with M-RoPE;
    # llama.cpp's qwen2vl graph runs both decoders (HF's half-split rope: no q/k permutation)
    vision_prefixes = ("model.visual",)
    connector_prefixes = ("model.visual.merger",)
    text_prefix = "model.language_model"
    # (that graph turns an all-zero embedding row, an untrained padding_idx row, into NaN
    # logits: save_tiny fills such rows)
    gguf_arch = "QWEN2VL"
    mrope = True
    image_token = "<|image_pad|>"

    @classmethod
    def load_processor(cls, model_dir: Path) -> Any:
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        image_processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
        template = getattr(tokenizer, "chat_template", None) or _saved_template(model_dir)
        return image_only_processor_class()(image_processor, tokenizer, chat_template=template)


class Qwen2VLArch(_QwenVLBase):
    """Qwen2-VL vision-language model."""

    architecture = "Qwen2VLForConditionalGeneration"
    family = "qwen2vl"
    model_type = "qwen2_vl"
    summary = "Qwen2-VL (ViT + 2x2 merger + Qwen2 with M-RoPE)"
    tiny_name = "qwen2vl"
    mmproj_projector = "qwen2vl_merger"
    onnx_vision = "qwen2vl"

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        tokenizer = _tiny_tokenizer(tokenizer_dir)
        vision = dict(
            depth=2,
            embed_dim=64,
            hidden_size=64,
            mlp_ratio=2,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        )
        config = Qwen2VLConfig(
            text_config=_tiny_text_config(tokenizer),
            vision_config=vision,
            architectures=[cls.architecture],
            tie_word_embeddings=True,
            **_token_ids(tokenizer),
        )
        seeded(seed)
        save_tiny(out, Qwen2VLForConditionalGeneration(config), _processor(tokenizer), cls, seed)


class Qwen25VLArch(_QwenVLBase):
    """Qwen2.5-VL vision-language model."""

    architecture = "Qwen2_5_VLForConditionalGeneration"
    family = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    summary = "Qwen2.5-VL (windowed ViT + merger + Qwen2 with M-RoPE)"
    tiny_name = "qwen2.5vl"
    mmproj_projector = "qwen2.5vl_merger"
    # no ONNX vision graph yet (its windowed attention is not restated in export.onnx.graphs)

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        tokenizer = _tiny_tokenizer(tokenizer_dir)
        vision = dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,  # libmtmd's qwen2.5vl_merger has this window built in
            fullatt_block_indexes=[1],
            in_channels=3,
        )
        config = Qwen2_5_VLConfig(
            text_config=_tiny_text_config(tokenizer),
            vision_config=vision,
            architectures=[cls.architecture],
            tie_word_embeddings=True,
            **_token_ids(tokenizer),
        )
        seeded(seed)
        save_tiny(out, Qwen2_5_VLForConditionalGeneration(config), _processor(tokenizer), cls, seed)
