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
    # SigLIP tower -> pixel-shuffle connector -> Llama (llama.cpp: llama rope, q/k permuted)
    vision_prefixes = ("model.vision_model",)
    connector_prefixes = ("model.connector",)
    text_prefix = "model.text_model"
    gguf_arch = "LLAMA"
    gguf_permute_qk = True
    mmproj_projector = "idefics3"
    image_token = IMAGE_TOKEN
    onnx_vision = "idefics3"

    @classmethod
    def load_processor(cls, model_dir: Path) -> Any:
        """The saved processor, cutting images as llama.cpp's libmtmd does (`tiled`)."""
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_dir)
        processor.image_processor = tiled(processor.image_processor)
        return processor

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        model, processor = _make(
            tokenizer_dir, seed, TINY_IMAGE, TINY_PATCH, TINY_SCALE, vision, {}
        )
        save_tiny(out, model, processor, cls, seed)

    @classmethod
    def build_student(cls, out: Path, tokenizer_dir: Path, seed: int, preset: str) -> None:
        """The demo student (`student:<preset>`, see `STUDENT_PRESETS`): a seeded Idefics3 whose
        text model is either random (sized to be trained fully on CPU in minutes) or the
        packaged SmolLM2-135M-Instruct (`text_weights`), with a small random vision tower."""
        size = STUDENT_PRESETS[preset]
        vision = dict(
            hidden_size=size.vision_hidden,
            intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers,
        )
        if size.text_weights:
            _build_pretrained(out, tokenizer_dir, seed, size, vision, f"student:{preset}")
            return
        text = dict(
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=2048,
        )
        model, processor = _make(tokenizer_dir, seed, size.image, size.patch, 2, vision, text)
        save_tiny(out, model, processor, cls, seed, f"student:{preset}")


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
    # a text-only model spec whose weights become the text model (its sizes then come from it)
    text_weights: str | None = None

    @property
    def image_tokens(self) -> int:
        return (self.image // self.patch) ** 2 // 4  # pixel shuffle, scale 2


# `smollm2`: SmolVLM-256M's text model, the packaged SmolLM2-135M-Instruct (30 layers, 576 wide,
# 134.5M parameters) under a small vision tower; it can already read values from a caption in its
# prompt, which a student trained from scratch never learned (README).
# `smolvlm` (from scratch): 12.2M parameters, 9.4M of them the tied 49k-token embedding / output
# layer, which dominates a training step at this width (hence training/sft/loss.py); its recipe
# rebuilds it over the ~1.3k SmolLM2 tokens its training texts use (3.0M parameters, 2x faster
# steps). 64-px images give 4 image tokens.
STUDENT_PRESETS: dict[str, StudentSize] = {
    "smollm2": StudentSize(
        hidden=576,
        intermediate=1536,
        layers=30,
        heads=9,
        kv_heads=3,
        image=64,
        patch=16,
        vision_hidden=96,
        vision_layers=2,
        text_weights="embedded:smollm2-135m-instruct",
    ),
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


def _build_pretrained(
    out: Path,
    tokenizer_dir: Path,
    seed: int,
    size: StudentSize,
    vision: dict[str, int],
    source: str,
) -> None:
    """An Idefics3 student whose text model is `size.text_weights` (a Llama), copied in."""
    from transformers import LlamaConfig

    from casseat_edge.models import resolve_model

    text_dir = resolve_model(size.text_weights).path
    text = LlamaConfig.from_pretrained(text_dir).to_dict()
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keep += ("num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps")
    text = {k: text[k] for k in keep}
    wanted = (size.hidden, size.intermediate, size.layers, size.heads, size.kv_heads)
    if tuple(text[k] for k in keep[:5]) != wanted:
        raise ValueError(f"{size.text_weights}: its sizes {text} differ from the preset's {size}")
    model, processor = _make(tokenizer_dir, seed, size.image, size.patch, 2, vision, text)
    _copy_text_weights(model.model, text_dir)
    _match_embedding_scale(model, size.image, seed)
    save_tiny(out, model, processor, Idefics3Arch, seed, source)


def _match_embedding_scale(model: Any, image: int, seed: int) -> None:
    """Scale the random connector so image features start at the RMS of the pretrained text
    embeddings (at the default init they are ~3x larger: measured 0.41 vs 0.13 for SmolLM2),
    so that the untrained image tokens neither dominate attention nor amplify quantization
    noise of the vision tower into the text model's logits."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(4, 1, 3, image, image, generator=generator).clamp(-1, 1)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels)
        if isinstance(features, (tuple, list)):
            features = torch.cat(list(features))
        feature_rms = features.float().pow(2).mean(-1).sqrt().mean()
        rows = model.get_input_embeddings().weight
        target = rows.pow(2).mean(-1).sqrt().mean()
        model.model.connector.modality_projection.proj.weight.mul_(target / feature_rms)


def _copy_text_weights(model: Any, text_dir: Path) -> None:
    """Load a Llama's weights into `model.text_model`; embedding rows beyond its vocabulary (the
    Idefics3 special tokens) start at the mean of its rows (ordinary-looking, not random)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(text_dir / "model.safetensors")
    text_model = model.text_model
    embed = state.pop("model.embed_tokens.weight")
    state.pop("lm_head.weight", None)  # tied
    body = {k.removeprefix("model."): v for k, v in state.items()}
    with torch.no_grad():
        rows = text_model.embed_tokens.weight
        rows[: embed.shape[0]] = embed
        rows[embed.shape[0] :] = embed.mean(0)
        missing, unexpected = text_model.load_state_dict(body, strict=False)
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise ValueError(f"{text_dir}: weights do not fit (missing {missing}, extra {unexpected})")


def tiled(image_processor: Any) -> Any:
    """`image_processor` as an Idefics3 processor that lays images out as llama.cpp's libmtmd
    does, which every llama.cpp client (llama-server, Ollama, llama-cpp-python's server) uses:
    images are always cut into tiles plus a global image, and one that fits a single tile is a
    1x1 grid (the tile, then the global image: 2 x image_seq_len + 3 more tokens than HF's
    global image alone). Training, export verification and every backend use this layout, so a
    student sees in a llama.cpp client exactly the tokens it was trained on. transformers.js
    and HF's own processor give such an image no grid (see the README)."""
    settings = {**image_processor.to_dict(), "do_image_splitting": True}
    settings.pop("image_processor_type", None)
    return _tiled_class()(**settings)


def _tiled_class() -> type:
    """Made on first use (transformers is imported lazily) and kept as a module attribute, so
    the processor pickles into data-loader workers."""
    cls = globals().get("TiledIdefics3ImageProcessor")
    if cls is not None:
        return cls
    from transformers import Idefics3ImageProcessor

    class TiledIdefics3ImageProcessor(Idefics3ImageProcessor):
        def split_image(self, image: Any, max_image_size: Any, *args: Any, **kwargs: Any) -> Any:
            frames, rows, cols = super().split_image(image, max_image_size, *args, **kwargs)
            if rows == 0 and cols == 0:  # it fits one tile (already resized to it)
                return [image, image], 1, 1
            return frames, rows, cols

        def to_dict(self) -> dict[str, Any]:  # saved as the standard class clients know
            return {**super().to_dict(), "image_processor_type": "Idefics3ImageProcessor"}

    TiledIdefics3ImageProcessor.__qualname__ = "TiledIdefics3ImageProcessor"
    globals()["TiledIdefics3ImageProcessor"] = TiledIdefics3ImageProcessor
    return TiledIdefics3ImageProcessor


def __getattr__(name: str) -> Any:  # unpickling in a fresh process
    if name == "TiledIdefics3ImageProcessor":
        return _tiled_class()
    raise AttributeError(name)


def _make(
    tokenizer_dir: Path,
    seed: int,
    image: int,
    patch: int,
    scale: int,
    vision: dict[str, int],
    text: dict[str, Any],
) -> tuple[Any, Any]:
    """A seeded Idefics3 model and its processor (64-px tiles in libmtmd's layout, ChatML)."""
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
    image_processor = tiled(
        Idefics3ImageProcessor(
            size={"longest_edge": image},
            max_image_size={"longest_edge": image},
            do_image_splitting=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
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
    return Idefics3ForConditionalGeneration(config), processor
