"""The one preprocessing path: image -> processor inputs, chat messages -> prompt -> tensors.

Training collation, export dummy inputs and the runtime all call these functions, so the tensors a
model is trained on, exported with and served with are the same (a test checks it). Text-only
models see no pixels: each image part of a message becomes the image's caption. Caption-augmented
vision models (`add_caption`) see both: the image, then the same caption text.

    image = load_image("bench/images/bar_chart-00001.png")
    messages = user_messages("What is the value of bar B?")
    inputs = encode(processor, arch, messages, image=image, caption=caption)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from casseat_edge.errors import DataError

MAX_IMAGE_SIDE = 2048  # larger images are downscaled (aspect kept) before the processor sees them
MAX_DECODE_PIXELS = 64_000_000  # refuse decompression bombs instead of allocating gigabytes
CAPTION_PREFIX = "Image description: "


def load_image(
    source: str | Path | bytes | Image.Image, max_side: int = MAX_IMAGE_SIDE
) -> Image.Image:
    """Decode to RGB; downscale so the longer side is at most `max_side`. Clear error if undecodable."""
    image = source if isinstance(source, Image.Image) else _decode(source)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def image_inside(root: Path, image: Any, where: str) -> Path:
    """A dataset row's relative image path, resolved; it must stay inside the dataset's `root`
    (a resolved directory). `where` names the row in the error."""
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: image: missing, but the messages have an image part")
    path = (root / image).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"{where}: image: {image!r} leaves the samples directory {root}")
    return path


def _decode(source: str | Path | bytes) -> Image.Image:
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > MAX_DECODE_PIXELS:
            raise DataError(
                f"{name}: image is {image.width}x{image.height}, over {MAX_DECODE_PIXELS} pixels; "
                "downscale it before use"
            )
        image.load()
    except FileNotFoundError:
        raise DataError(f"{name}: image file not found") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"{name}: cannot decode image ({exc.__class__.__name__}); expected a PNG/JPEG/WebP file"
        ) from None
    return image


def processor_tokenizer(processor: Any) -> Any:
    """The tokenizer inside a multimodal processor, or the tokenizer itself (text-only models)."""
    return getattr(processor, "tokenizer", processor)


def user_messages(question: str, with_image: bool = True) -> list[dict[str, Any]]:
    """A one-turn conversation in the HF content-list format (image first, then the question)."""
    if not question or not question.strip():
        raise DataError("question: empty; pass the problem's question text")
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def to_text_only(messages: list[dict[str, Any]], caption: str | None) -> list[dict[str, Any]]:
    """Replace image parts by the caption and flatten content lists to strings (text-only models)."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            parts = []
            for part in content:
                if part["type"] == "image":
                    if caption is None:
                        raise DataError(
                            "a text-only model needs the image caption; the problem has none"
                        )
                    parts.append(caption_text(caption))
                elif part["type"] == "text":
                    parts.append(part["text"])
            content = "".join(parts)
        out.append({**message, "content": content})
    return out


def caption_text(caption: str) -> str:
    """The text that stands for (or goes with) an image: the prefixed caption and a newline."""
    return CAPTION_PREFIX + caption.strip() + "\n"


def add_caption(messages: list[dict[str, Any]], caption: str | None) -> list[dict[str, Any]]:
    """Caption-augmented prompts for vision models: a text part with the caption right after each
    image part (the image stays). The same text `to_text_only` puts in place of the image, so a
    caption-augmented vision model and a text-only model read identical caption text. Returns new
    messages; the input is not changed. Messages without an image part are returned as they are."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str) or not any(p["type"] == "image" for p in content):
            out.append(message)
            continue
        if caption is None or not caption.strip():
            raise DataError(
                "captions: the prompt is caption-augmented but the problem has no caption; "
                "add metadata.caption or turn captions off"
            )
        parts: list[dict[str, Any]] = []
        for part in content:
            parts.append(part)
            if part["type"] == "image":
                parts.append({"type": "text", "text": caption_text(caption)})
        out.append({**message, "content": parts})
    return out


def count_images(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if not isinstance(m["content"], str)
        for part in m["content"]
        if part["type"] == "image"
    )


def render_prompt(
    processor: Any,
    arch: Any,
    messages: list[dict[str, Any]],
    caption: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text through the model's own chat template (captions for text-only models)."""
    if not arch.vision:
        messages = to_text_only(messages, caption)
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(
    processor: Any,
    arch: Any,
    messages: list[dict[str, Any]],
    image: Image.Image | None = None,
    caption: str | None = None,
    add_generation_prompt: bool = True,
) -> dict[str, Any]:
    """Model inputs (PyTorch tensors) for one conversation: input_ids, attention_mask, pixels."""
    return encode_batch(processor, arch, [messages], [image], [caption], add_generation_prompt)


def encode_batch(
    processor: Any,
    arch: Any,
    conversations: list[list[dict[str, Any]]],
    images: list[Image.Image | None],
    captions: list[str | None],
    add_generation_prompt: bool = True,
) -> dict[str, Any]:
    """Inputs for several conversations, left-padded (the side batched generation needs)."""
    texts = [
        render_prompt(processor, arch, m, c, add_generation_prompt)
        for m, c in zip(conversations, captions)
    ]
    tokenizer = processor_tokenizer(processor)
    tokenizer.padding_side = "left"
    kwargs: dict[str, Any] = {"return_tensors": "pt", "add_special_tokens": False, "padding": True}
    if not arch.vision:
        return dict(processor(texts, **kwargs))
    per_conversation = [_images_for(m, image) for m, image in zip(conversations, images)]
    if any(per_conversation):
        kwargs["images"] = per_conversation if len(texts) > 1 else per_conversation[0]
    return dict(processor(text=texts, **kwargs))


def _images_for(messages: list[dict[str, Any]], image: Image.Image | None) -> list[Image.Image]:
    n_images = count_images(messages)
    if n_images and image is None:
        raise DataError("the conversation has an image part but no image was given")
    return [image] * n_images
