"""The demo student: the `student:` preset, its two-phase training (reading warm-up, then the
caption-augmented Cas-SEAT mix), and the caption transform giving the same tensors in SFT
collation and in the runtime's encode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from casseat_edge.errors import ConfigError, ModelSpecError
from casseat_edge.models import load_model, resolve_model
from casseat_edge.models.idefics3 import STUDENT_PRESETS
from casseat_edge.preprocess import CAPTION_PREFIX
from casseat_edge.prompts import assistant, stage1_messages
from runtime import Cascade
from runtime.backends.torch_backend import TorchEngine
from training.sft.data import Sample, SFTDataset, load_samples
from training.sft.student import StudentConfig, train_student, write_warmup_samples


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small benchmark and its procedural Cas-SEAT samples."""
    from casseat_edge.bench import BenchConfig, make_bench
    from training.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("student-data")
    make_bench(BenchConfig(out=str(root / "bench"), n=27, seed=5))
    synthesize(SynthConfig(problems=str(root / "bench"), teacher="procedural", out=str(root / "s")))
    return root


def test_preset_builds_an_untrained_idefics3_student():
    ref = resolve_model("student:smolvlm")
    assert ref.kind == "student" and ref.arch.architecture == "Idefics3ForConditionalGeneration"
    loaded = load_model(ref)
    size = STUDENT_PRESETS["smolvlm"]
    text = loaded.model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (size.hidden, size.layers)
    assert loaded.processor.image_seq_len == size.image_tokens
    manifest = json.loads((ref.path / "casseat.json").read_text())
    assert manifest["config"]["source"] == "student:smolvlm"
    other = resolve_model("student:smolvlm@3").path / "model.safetensors"
    assert other.read_bytes() != (ref.path / "model.safetensors").read_bytes()
    with pytest.raises(ModelSpecError, match="student presets: student:smollm2"):
        resolve_model("student:huge")


def test_pretrained_preset_is_smollm2_under_a_vision_tower():
    """`student:smollm2`'s text model computes exactly what the packaged SmolLM2 computes on
    text; the Idefics3 special tokens get new rows (their mean), not SmolLM2's."""
    student = load_model("student:smollm2")
    smollm2 = load_model("embedded:smollm2-135m-instruct")
    ids = smollm2.tokenizer("The bar for May is 7 units tall.", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = student.model(input_ids=ids).logits[0]
        reference = smollm2.model(input_ids=ids).logits[0]
    vocab = reference.shape[-1]
    assert torch.allclose(ours[:, :vocab], reference, atol=1e-4)
    rows = student.model.get_input_embeddings().weight
    assert rows.shape[0] == len(student.tokenizer) == vocab + 40
    assert torch.allclose(rows[vocab], rows[:vocab].mean(0), atol=1e-6)
    assert student.processor.image_seq_len == STUDENT_PRESETS["smollm2"].image_tokens
    # the random connector starts at the scale of SmolLM2's embeddings (default init: ~3x)
    image = STUDENT_PRESETS["smollm2"].image
    with torch.no_grad():
        pixels = torch.rand(2, 1, 3, image, image, generator=torch.Generator().manual_seed(1))
        features = student.model.model.get_image_features(pixel_values=pixels * 2 - 1)
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    feature_rms = features.pow(2).mean(-1).sqrt().mean()
    embedding_rms = rows[:vocab].pow(2).mean(-1).sqrt().mean()
    assert 0.7 < float(feature_rms / embedding_rms) < 1.4


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--data"):
        StudentConfig(data=())
    with pytest.raises(ConfigError, match="--bench"):
        StudentConfig(data=("s",), warmup_steps=5)
    with pytest.raises(ConfigError, match="--preset"):
        StudentConfig(data=("s",), preset="huge")
    with pytest.raises(ConfigError, match="--vocab domain"):
        StudentConfig(data=("s",), vocab="domain")
    with pytest.raises(ConfigError, match="--lr"):
        StudentConfig(data=("s",), lr=float("nan"))
    scratch = StudentConfig.for_preset("smolvlm", data=("s",), bench="b", steps=7)
    assert (scratch.method, scratch.vocab, scratch.steps) == ("full", "domain", 7)


def test_warmup_samples_are_image_to_caption_on_the_train_split(data: Path, tmp_path: Path):
    out = write_warmup_samples(data / "bench", tmp_path / "warm", seed=0)
    samples = load_samples(out)
    problems = [json.loads(line) for line in (data / "bench" / "problems.jsonl").open()]
    train = {p["pid"]: p for p in problems if p["metadata"]["split"] == "train"}
    assert sorted(s.id.split(":")[0] for s in samples) == sorted(train)
    first = samples[0]
    assert first.image.is_file() and first.image.is_relative_to(out.resolve())
    reply = first.messages[-1]["content"][0]["text"]
    assert reply == train[first.id.split(":")[0]]["metadata"]["caption"]
    assert [p["type"] for p in first.messages[0]["content"]] == ["image", "text"]


def test_train_student_two_phases_and_a_loadable_captioned_model(data: Path, tmp_path: Path):
    config = StudentConfig.for_preset(
        "smolvlm",
        data=(str(data / "s"),),
        bench=str(data / "bench"),
        out=str(tmp_path / "student"),
        steps=3,
        warmup_steps=2,
        batch_size=2,
    )
    seen: list[tuple[int, int]] = []
    summary = train_student(config, progress=lambda done, total: seen.append((done, total)))
    assert (summary["warmup"]["steps"], summary["mix"]["steps"]) == (2, 3)
    assert seen[-1] == (5, 5)
    accuracy = summary["warmup"]["caption_accuracy"]
    assert 0.0 <= accuracy["from_image"] <= 1.0 and accuracy["tokens"] > 0
    manifest = json.loads((tmp_path / "student" / "casseat.json").read_text())
    assert manifest["captions"] is True and manifest["student"]["preset"] == "smolvlm"
    assert manifest["config"]["model"] == str(tmp_path / "student.work" / "warmup")
    warm = json.loads((tmp_path / "student.work" / "warmup" / "casseat.json").read_text())
    assert warm["captions"] is False  # the warm-up reads pixels only
    with Cascade(tmp_path / "student", policy="cot", max_new_tokens=4) as cascade:
        assert cascade.captions  # from the manifest
        problem = json.loads((data / "bench" / "problems.jsonl").open().readline())
        result = cascade.solve(
            data / "bench" / problem["image"],
            problem["question"],
            caption=problem["metadata"]["caption"],
        )
    assert result.options["captions"] is True and result.stages[0].completion_tokens >= 1
    with pytest.raises(ConfigError, match="already exists"):
        train_student(config)


def test_pretrained_student_with_top_layer_lora_adapts_only_those(data: Path, tmp_path: Path):
    """LoRA on SmolLM2's top 8 layers, merged: the layers below, the embeddings, the vision
    tower and the connector keep the preset's weights exactly."""
    from safetensors.torch import load_file

    config = StudentConfig(
        data=(str(data / "s"),), out=str(tmp_path / "st"), steps=2, batch_size=2, lora_layers=8
    )
    summary = train_student(config)
    assert summary["mix"]["steps"] == 2 and "warmup" not in summary
    base = load_file(resolve_model("student:smollm2").path / "model.safetensors")
    tuned = load_file(tmp_path / "st" / "model.safetensors")
    assert base.keys() == tuned.keys()
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    layers = STUDENT_PRESETS["smollm2"].layers
    top = tuple(f".layers.{i}." for i in range(layers - config.lora_layers, layers))
    assert changed and all(name.startswith("model.text_model.") for name in changed)
    assert all(any(t in name for t in top) for name in changed)
    manifest = json.loads((tmp_path / "st" / "casseat.json").read_text())
    assert manifest["captions"] is True and manifest["student"]["preset"] == "smollm2"
    assert manifest["config"]["lora_layers"] == 8 and manifest["config"]["packing"] is True


def test_domain_vocabulary_student_tokenizes_like_its_gguf(data: Path, tmp_path: Path):
    """The default student vocabulary is the SmolLM2 tokens its training texts use: the same
    tokens on those texts, a fraction of the embedding rows, and llama.cpp reads the exported
    vocabulary exactly as the HF tokenizer does, on domain text and on anything else."""
    import llama_cpp
    from transformers import AutoTokenizer

    from export.gguf import GgufExportConfig, export_gguf
    from tests.test_models import TOKENIZER_TEXTS

    out = tmp_path / "student"
    config = StudentConfig.for_preset(
        "smolvlm", data=(str(data / "s"),), out=str(out), steps=2, warmup_steps=0, batch_size=2
    )
    summary = train_student(config)
    full = load_model("student:smolvlm").tokenizer
    ours = AutoTokenizer.from_pretrained(out)
    assert summary["vocab_size"] == len(ours) < len(full) / 10
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["student"]["vocab_size"] == summary["vocab_size"]
    rows = [json.loads(line) for line in (data / "s" / "samples.jsonl").open()]
    texts = [rows[0]["messages"][-1]["content"][0]["text"], rows[-1]["caption"]]
    for text in texts:
        assert ours.tokenize(text) == full.tokenize(text)
    export_gguf(GgufExportConfig(model=str(out), out=str(tmp_path / "gguf"), quant="f32"))
    reference = llama_cpp.Llama(
        str(tmp_path / "gguf" / "model-f32.gguf"), vocab_only=True, verbose=False
    )
    for text in [*texts, *TOKENIZER_TEXTS, "<fake_token_around_image><global-img><image>\n\n"]:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        assert ours(text, add_special_tokens=False).input_ids == expected, text


class RecordingEngine(TorchEngine):
    """The real torch backend, keeping what its `encode` produced."""

    def encode(self, messages, image, caption):  # noqa: ANN001, ANN201
        self.encoded = super().encode(messages, image, caption)
        return self.encoded


def test_caption_transform_same_tensors_in_training_and_runtime(data: Path):
    row = json.loads((data / "bench" / "problems.jsonl").open().readline())
    image = data / "bench" / row["image"]
    caption = row["metadata"]["caption"]
    problem = {**row, "image": "<image>"}
    engine = RecordingEngine("student:smolvlm")
    with Cascade(engine, policy="cot", max_new_tokens=2, captions=True) as cascade:
        cascade.solve(image, row["question"], caption=caption, **_fields(row))
    messages = stage1_messages(problem) + [assistant("Final answer: 1")]
    sample = Sample("x", "cot", messages, image, caption)
    dataset = SFTDataset([sample], engine.processor, engine.arch, 4096, captions=True)
    train_side = dataset.encode(sample, upto=1, generation=True)
    assert train_side["input_ids"][0].tolist() == engine.encoded.ids
    for key, value in engine.encoded.extra.items():
        assert torch.equal(train_side[key], value), key
    text = engine.tokenizer.decode(engine.encoded.ids)
    assert CAPTION_PREFIX + caption in text
    assert text.index("<image>") < text.index(CAPTION_PREFIX) < text.index(row["question"])


def _fields(row: dict) -> dict:
    keys = ("choices", "answer", "answer_type", "precision", "unit", "question_type")
    return {k: row.get(k) for k in keys}
