"""The one preprocessing path: image decoding and resize policy, captions for text-only models,
prompt rendering through each model's chat template, and image-token expansion."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from casseat_edge.errors import DataError
from casseat_edge.models import load_model
from casseat_edge.preprocess import (
    CAPTION_PREFIX,
    MAX_IMAGE_SIDE,
    encode,
    load_image,
    render_prompt,
    to_text_only,
    user_messages,
)


def _png(size=(40, 30), mode="RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else 0).save(buf, "PNG")
    return buf.getvalue()


def test_load_image_converts_and_downscales_huge_images():
    assert load_image(_png()).mode == "RGB"
    big = load_image(_png((MAX_IMAGE_SIDE * 2, 100), mode="L"))
    assert big.size == (MAX_IMAGE_SIDE, 50)


def test_load_image_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="<bytes>: cannot decode image"):
        load_image(b"not an image")
    with pytest.raises(DataError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")


def test_empty_question_is_refused():
    with pytest.raises(DataError, match="question: empty"):
        user_messages("   ")


def test_text_only_models_read_the_caption():
    messages = user_messages("How many bars?")
    flat = to_text_only(messages, "A bar chart with 3 bars.")
    assert flat == [
        {"role": "user", "content": CAPTION_PREFIX + "A bar chart with 3 bars.\nHow many bars?"}
    ]
    with pytest.raises(DataError, match="needs the image caption"):
        to_text_only(messages, None)


def test_prompt_rendering_per_family():
    llama = load_model("tiny:llama")
    text = render_prompt(llama.processor, llama.arch, user_messages("Q?"), caption="C.")
    assert text == f"<|im_start|>user\n{CAPTION_PREFIX}C.\nQ?<|im_end|>\n<|im_start|>assistant\n"
    smolvlm = load_model("tiny:smolvlm")
    text = render_prompt(smolvlm.processor, smolvlm.arch, user_messages("Q?"))
    assert text == "<|im_start|>user\n<image>Q?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("spec", "token"), [("tiny:smolvlm", "<image>"), ("tiny:qwen2vl", "<|image_pad|>")]
)
def test_image_tokens_expand_to_the_feature_count(spec, token):
    loaded = load_model(spec)
    image = load_image(_png((336, 336)))
    inputs = encode(loaded.processor, loaded.arch, user_messages("Q?"), image=image)
    token_id = loaded.tokenizer.convert_tokens_to_ids(token)
    n_tokens = int((inputs["input_ids"] == token_id).sum())
    features = loaded.model.get_image_features(
        **{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    )
    n_features = (
        sum(f.shape[0] for f in features)
        if isinstance(features, (list, tuple))
        else (features.reshape(-1, features.shape[-1]).shape[0])
    )
    assert n_tokens == n_features > 0
    with pytest.raises(DataError, match="has an image part but no image"):
        encode(loaded.processor, loaded.arch, user_messages("Q?"))


def test_add_caption_puts_the_caption_text_after_the_image():
    from casseat_edge.preprocess import add_caption

    messages = user_messages("How many bars?") + [
        {"role": "assistant", "content": [{"type": "text", "text": "3"}]}
    ]
    before = [dict(m) for m in messages]
    out = add_caption(messages, " A bar chart with 3 bars. ")
    assert messages == before  # a new list; the input is unchanged
    assert out[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": CAPTION_PREFIX + "A bar chart with 3 bars.\n"},
        {"type": "text", "text": "How many bars?"},
    ]
    assert out[1] is messages[1]  # no image: left as it is
    # a caption-augmented vision model reads exactly the caption text a text-only model reads
    flat = to_text_only(messages, "A bar chart with 3 bars.")[0]["content"]
    assert "".join(p.get("text", "") for p in out[0]["content"]) == flat
    with pytest.raises(DataError, match="captions: .* no caption"):
        add_caption(messages, None)
    assert add_caption([{"role": "user", "content": "text"}], None)[0]["content"] == "text"
