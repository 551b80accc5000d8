"""SFT: config validation, loss masks token by token, collation, and training runs on tiny models
(overfit, LoRA/full on Idefics3 and Qwen2-VL, merge parity, resume, CLI)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from casseat_edge.errors import ConfigError, DataError
from casseat_edge.models import load_model
from casseat_edge.preprocess import encode, user_messages
from tests.conftest import make_synth
from training.sft import SFTConfig, train
from training.sft.collate import SFTCollator
from training.sft.data import IGNORE_INDEX, SFTDataset, load_samples

FAST = {"save_steps": 0, "batch_size": 2, "logging_steps": 1, "seed": 0}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Cas-SEAT samples: a small benchmark through the procedural teacher."""
    return make_synth(tmp_path_factory.mktemp("sft-data"), n=60, seed=3)


def write_short_samples(out: Path, n: int = 32) -> Path:
    """`n` short cot samples (one image each, captioned): quick to overfit."""
    (out / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (32, 32), (8 * i % 256, 40, 200)).save(out / "images" / f"{i}.png")
        question = f"How many dots are there in picture {i}?"
        messages = user_messages(question) + [
            {"role": "assistant", "content": [{"type": "text", "text": f"Final answer: {i % 7}"}]}
        ]
        rows.append(
            {"id": f"s{i}", "pid": f"p{i}", "kind": "cot", "image": f"images/{i}.png",
             "messages": messages, "caption": f"{i % 7} dots.", "split": "train"}
        )  # fmt: skip
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"data": ""}, "--data"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": 0.0}, "--lr"),
        ({"lora_dropout": 1.5}, "--lora-dropout"),
        ({"max_steps": -1}, "--max-steps"),
        ({"target_modules": ()}, "--target-modules"),
        ({"freeze_vision": True, "freeze_connector": True, "freeze_lm": True}, "--freeze"),
    ],
)
def test_config_errors_name_the_flag(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        SFTConfig(**{"data": "d", **overrides})


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("spec", ["tiny:smolvlm", "tiny:llama"])
def test_loss_mask_token_by_token(synth_dir, spec):
    loaded = load_model(spec)
    tok = loaded.tokenizer
    samples = load_samples(synth_dir, limit=8)
    assert {s.kind for s in samples} == {"cot", "eval"}
    dataset = SFTDataset(samples, loaded.processor, loaded.arch, max_length=4096)
    for sample, ids, labels in zip(dataset.samples, dataset.input_ids, dataset.labels):
        assert len(ids) == len(labels)
        learned = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        # one contiguous span: the final assistant turn (for eval, never the stage-1 reply)
        assert learned == list(range(learned[0], learned[-1] + 1))
        assert all(labels[i] == ids[i] for i in learned)
        reply = sample.messages[-1]["content"][0]["text"]
        expected = tok(reply + "<|im_end|>", add_special_tokens=False).input_ids
        assert [ids[i] for i in learned] == expected
        assert tok.decode(ids[: learned[0]]).endswith("<|im_start|>assistant\n")
        assert tok.decode(ids[learned[-1] + 1 :]) == "\n"
        if sample.kind == "eval":
            stage1 = sample.messages[1]["content"][0]["text"]
            assert stage1 in tok.decode(ids[: learned[0]])
    if loaded.arch.vision:  # the image tokens are in the inputs and never learned
        image_id = tok.convert_tokens_to_ids("<image>")
        assert image_id in dataset.input_ids[0]
        assert image_id not in dataset.labels[0]


def test_learn_stage1_adds_only_right_solutions_under_review(synth_dir):
    loaded = load_model("tiny:llama")
    tok = loaded.tokenizer
    samples = [s for s in load_samples(synth_dir) if s.kind == "eval"]
    assert {s.stage1_correct for s in samples} == {True, False}  # Accept and Refine reviews
    plain = SFTDataset(samples, loaded.processor, loaded.arch, 4096)
    more = SFTDataset(samples, loaded.processor, loaded.arch, 4096, learn_stage1=True)
    assert more.input_ids == plain.input_ids
    for sample, before, after in zip(samples, plain.labels, more.labels, strict=True):
        extra = [t for b, t in zip(before, after, strict=True) if b != t]
        assert all(b == IGNORE_INDEX for b, t in zip(before, after, strict=True) if b != t)
        stage1 = sample.messages[1]["content"][0]["text"] + "<|im_end|>"
        expected = tok(stage1, add_special_tokens=False).input_ids if sample.stage1_correct else []
        assert extra == expected, sample.id


def test_long_sample_is_an_error_naming_it_or_skipped(synth_dir):
    loaded = load_model("tiny:llama")
    samples = load_samples(synth_dir, limit=6)
    lengths = [
        len(SFTDataset([s], loaded.processor, loaded.arch, 10_000).input_ids[0]) for s in samples
    ]
    limit = sorted(lengths)[len(lengths) // 2]
    longest = samples[lengths.index(max(lengths))]
    with pytest.raises(DataError, match=f"sample {longest.id}: .* --max-length {limit}"):
        SFTDataset(samples, loaded.processor, loaded.arch, max_length=limit)
    dataset = SFTDataset(samples, loaded.processor, loaded.arch, max_length=limit, skip_long=True)
    assert len(dataset.skipped) == sum(n > limit for n in lengths) > 0
    assert len(dataset) + len(dataset.skipped) == len(samples)


def test_image_outside_samples_dir_is_refused(tmp_path):
    data = write_short_samples(tmp_path / "d", n=2)
    rows = [json.loads(line) for line in (data / "samples.jsonl").read_text().splitlines()]
    rows[1]["image"] = "../../etc/passwd"
    (data / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="leaves the samples directory"):
        load_samples(data)


@pytest.mark.parametrize("spec", ["tiny:smolvlm", "tiny:qwen2vl"])
def test_collator_right_pads_and_matches_single_encoding(synth_dir, spec):
    loaded = load_model(spec)
    samples = load_samples(synth_dir, limit=3)
    dataset = SFTDataset(samples, loaded.processor, loaded.arch, max_length=4096)
    batch = SFTCollator(pad_token_id=0)([dataset[i] for i in range(3)])
    for i in range(3):
        n = len(dataset.input_ids[i])
        assert batch["input_ids"][i, :n].tolist() == dataset.input_ids[i]
        assert batch["attention_mask"][i].sum() == n
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
    loss = loaded.model(**batch).loss
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- freezing
def test_freeze_flags_and_lora_placement():
    from training.sft.model import prepare_model

    full = prepare_model(SFTConfig(data="d", model="tiny:smolvlm", method="full")).model
    grads = {n: p.requires_grad for n, p in full.named_parameters()}
    assert not any(g for n, g in grads.items() if n.startswith("model.vision_model."))
    assert all(
        g for n, g in grads.items() if n.startswith(("model.connector.", "model.text_model."))
    )
    config = SFTConfig(data="d", model="tiny:smolvlm", freeze_connector=True, freeze_vision=False)
    lora = prepare_model(config).model
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable)
    assert any(".vision_model." in n for n in trainable) and any(
        ".text_model." in n for n in trainable
    )
    config = SFTConfig(data="d", model="tiny:qwen2vl", method="full", freeze_lm=True)
    trainable = [n for n, p in prepare_model(config).model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("model.visual.merger.") for n in trainable)
    with pytest.raises(ConfigError, match="--method full --freeze-lm"):
        prepare_model(SFTConfig(data="d", model="tiny:qwen2vl", freeze_lm=True))


# ---------------------------------------------------------------- training
def test_overfits_32_samples(tmp_path):
    data = write_short_samples(tmp_path / "d", n=32)
    config = SFTConfig(
        data=str(data), model="tiny:llama", out=str(tmp_path / "o"), method="full",
        max_steps=24, lr=1e-2, lr_scheduler="constant", **{**FAST, "batch_size": 8},
    )  # fmt: skip
    summary = train(config)
    assert summary["steps"] == 24 and summary["samples"] == 32
    assert summary["final_loss"] < 0.1 * summary["first_loss"], summary
    log = json.loads((tmp_path / "o" / "train_log.json").read_text())
    assert len(log["steps"]) == 24 and log["steps"][-1]["tokens_per_s"] > 0
    assert (tmp_path / "o" / "loss.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def lora_smolvlm(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "o"
    config = SFTConfig(
        data=str(synth_dir), model="tiny:smolvlm", out=str(out), max_steps=3, lr=1e-2,
        limit=6, **FAST,
    )  # fmt: skip
    train(config)
    return out


def _generate(model_dir: Path | str, synth_dir: Path) -> list[int]:
    loaded = load_model(model_dir)
    sample = load_samples(synth_dir, limit=1)[0]
    image = Image.open(sample.image)
    inputs = encode(loaded.processor, loaded.arch, sample.messages[:1], image, sample.caption)
    tokens = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return tokens[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize(
    ("spec", "method"),
    [("tiny:smolvlm", "full"), ("tiny:qwen2vl", "lora"), ("tiny:qwen2vl", "full")],
)
def test_trained_model_loads_and_generates(synth_dir, tmp_path, spec, method):
    out = tmp_path / "o"
    train(SFTConfig(data=str(synth_dir), model=spec, out=str(out), method=method, max_steps=2,
                    limit=4, **FAST))  # fmt: skip
    assert len(_generate(out, synth_dir)) == 4
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["kind"] == "model" and manifest["method"] == method
    assert manifest["inputs"]["data"].startswith("sha256:") and manifest["base"] == spec
    assert (out / "adapter" / "adapter_config.json").is_file() == (method != "full")


def test_lora_output_loads_and_generates(lora_smolvlm, synth_dir):
    assert len(_generate(lora_smolvlm, synth_dir)) == 4
    assert (lora_smolvlm / "adapter" / "adapter_model.safetensors").is_file()


def test_merged_logits_equal_base_plus_adapter(lora_smolvlm, synth_dir):
    from peft import PeftModel

    # float64 compute, so the comparison sees the saved weights, not fp32 summation-order noise
    base = load_model("tiny:smolvlm", dtype="float64")
    sample = load_samples(synth_dir, limit=1)[0]
    inputs = encode(base.processor, base.arch, sample.messages, Image.open(sample.image),
                    add_generation_prompt=False)  # fmt: skip
    inputs["pixel_values"] = inputs["pixel_values"].double()
    with torch.no_grad():
        base_logits = base.model(**inputs).logits
        adapted = PeftModel.from_pretrained(base.model, lora_smolvlm / "adapter").eval()
        adapter_logits = adapted(**inputs).logits
        merged_logits = load_model(lora_smolvlm, dtype="float64").model(**inputs).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter learned something
    assert (merged_logits - adapter_logits).abs().max() < 1e-5


def test_resume_continues_from_last_checkpoint(synth_dir, tmp_path):
    common = {"data": str(synth_dir), "model": "tiny:llama", "limit": 8, "lr": 1e-2,
              "lr_scheduler": "constant", **{**FAST, "save_steps": 2}}  # fmt: skip
    straight = train(SFTConfig(out=str(tmp_path / "a"), max_steps=4, **common))
    train(SFTConfig(out=str(tmp_path / "b"), max_steps=2, **common))
    with pytest.raises(ConfigError, match="already exists"):
        train(SFTConfig(out=str(tmp_path / "b"), max_steps=4, **common))
    resumed = train(SFTConfig(out=str(tmp_path / "b"), max_steps=4, resume=True, **common))
    assert resumed["steps"] == 4
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3, 4]
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-4)


def test_resume_without_checkpoint_is_refused(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train(SFTConfig(data=str(synth_dir), model="tiny:llama", out=str(tmp_path / "o"),
                        resume=True))  # fmt: skip


# ---------------------------------------------------------------- CLI
def test_train_cli_json_and_errors(synth_dir, tmp_path):
    from click.testing import CliRunner

    from casseat_cli.cli import main

    args = ["train", "--data", str(synth_dir), "--model", "tiny:llama", "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--limit", "2", "--save-steps", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 1 and summary["method"] == "lora"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == ConfigError.exit_code and "already exists" in again.stderr
    long_out = tmp_path / "long"
    too_long = CliRunner().invoke(main, [*args[:5], "--out", str(long_out), "--max-length", "16"])
    assert (
        too_long.exit_code == DataError.exit_code and "tokens > --max-length 16" in too_long.stderr
    )
    assert not long_out.exists()  # a failed start claims no output directory
    bad = CliRunner().invoke(main, [*args[:-1], "--lora-r", "0"])
    assert (
        bad.exit_code == ConfigError.exit_code
        and bad.stderr.strip() == "error: --lora-r: must be >= 1, found 0"
    )


# ---------------------------------------------------------------- QLoRA, DDP
@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed"
)
def test_qlora_trains_on_nf4_base_and_merges(tmp_path):
    data = write_short_samples(tmp_path / "d", n=4)
    out = tmp_path / "o"
    summary = train(SFTConfig(data=str(data), model="tiny:smolvlm", out=str(out), method="qlora",
                              max_steps=2, lr=1e-2, **FAST))  # fmt: skip
    assert summary["quantized_layers"] == 2 * 7  # the decoder's linears: 2 layers x 7
    assert summary["final_loss"] < summary["first_loss"]
    merged = load_model(out)  # merged into a float32 reload of the base
    assert merged.model.dtype == torch.float32
    assert not any("Linear4bit" in type(m).__name__ for m in merged.model.modules())
    sample = load_samples(data, limit=1)[0]
    inputs = encode(merged.processor, merged.arch, sample.messages[:1], Image.open(sample.image))
    assert merged.model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > 3


def test_ddp_two_cpu_processes_with_gloo(tmp_path):
    data = write_short_samples(tmp_path / "d", n=16)
    out = tmp_path / "o"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), "-m", "training.sft", "--data", str(data),
               "--model", "tiny:llama", "--out", str(out), "--max-steps", "3",
               "--batch-size", "2", "--save-steps", "0", "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)  # exactly one document: only rank 0 prints
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert summary["epochs"] == pytest.approx(3 * 2 * 2 / 16)  # both ranks consumed batches
    assert load_model(out).arch.architecture == "LlamaForCausalLM"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- captions, label-position loss
def test_captions_add_the_caption_to_prompts_not_to_labels(synth_dir):
    loaded = load_model("tiny:smolvlm")
    tok = loaded.tokenizer
    samples = load_samples(synth_dir, limit=4)
    plain = SFTDataset(samples, loaded.processor, loaded.arch, max_length=4096)
    captioned = SFTDataset(samples, loaded.processor, loaded.arch, max_length=4096, captions=True)
    for sample, a, b, la, lb in zip(
        samples, plain.input_ids, captioned.input_ids, plain.labels, captioned.labels
    ):
        extra = tok(f"Image description: {sample.caption.strip()}\n", add_special_tokens=False)
        assert len(b) == len(a) + len(extra.input_ids)
        assert [t for t in la if t != IGNORE_INDEX] == [t for t in lb if t != IGNORE_INDEX]
        assert sample.caption.strip() in tok.decode(b)
    text_only = load_model("tiny:llama")
    ds = SFTDataset(samples, text_only.processor, text_only.arch, 4096, captions=True)
    assert not ds.captions  # text-only models read the caption in place of the image anyway
    assert ds.input_ids == SFTDataset(samples, text_only.processor, text_only.arch, 4096).input_ids


@pytest.mark.parametrize("spec", ["tiny:smolvlm", "tiny:qwen2vl", "tiny:llama"])
def test_label_position_loss_equals_the_hf_loss(synth_dir, spec):
    from training.sft.loss import label_position_loss

    loaded = load_model(spec)
    dataset = SFTDataset(load_samples(synth_dir, limit=4), loaded.processor, loaded.arch, 4096)
    batch = SFTCollator(loaded.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    with torch.no_grad():
        ours = label_position_loss(loaded.model.model, loaded.model.lm_head, batch)
        reference = loaded.model(**batch).loss
        n_labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        summed = label_position_loss(loaded.model.model, loaded.model.lm_head, batch, n_labels * 2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(summed, reference / 2, rtol=1e-5, atol=1e-5)


def test_group_by_length_batches_similar_lengths_from_the_dataset_lengths(synth_dir, tmp_path):
    from transformers import TrainingArguments

    from training.sft.loss import LabelPositionTrainer

    loaded = load_model("tiny:llama")
    dataset = SFTDataset(load_samples(synth_dir, limit=32), loaded.processor, loaded.arch, 4096)
    lengths = [len(ids) for ids in dataset.input_ids]
    assert len(set(lengths)) > 4  # mixed lengths, or the comparison below says nothing

    def padding(grouped: bool) -> tuple[int, list[int]]:
        args = TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, group_by_length=grouped,
            use_cpu=True, report_to="none", seed=0,
        )  # fmt: skip
        trainer = LabelPositionTrainer(model=loaded.model, args=args, train_dataset=dataset)
        order = list(trainer._get_train_sampler())
        batches = [order[i : i + 4] for i in range(0, len(order), 4)]
        waste = sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )
        return waste, order

    grouped_waste, grouped_order = padding(True)
    random_waste, random_order = padding(False)
    assert sorted(grouped_order) == sorted(random_order) == list(range(len(dataset)))
    # groups of 8 here (HF: batch x min(n // (4 x batch), 50)), so not all padding goes
    assert grouped_waste < 0.8 * random_waste


# ---------------------------------------------------------------- packing, top-layer LoRA
def test_pack_rows_first_fit_decreasing_within_capacity():
    from training.sft.collate import pack_rows

    lengths = [5, 9, 3, 7, 2, 12]
    rows = pack_rows(lengths, 12)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert len(rows) == 4  # 38 tokens in rows of 12: the fewest possible
    assert pack_rows([20, 3], 12) == [[0], [1]]  # too long for any row: a row of its own


@pytest.mark.parametrize("spec", ["tiny:smolvlm", "tiny:llama"])
def test_packed_batch_gives_the_padded_batch_loss_and_gradients(synth_dir, spec):
    """Packing changes the layout, not the maths: with position ids restarting per sample (and
    no attention mask) each sample attends to itself only, so loss and gradients are those of
    the padded batch."""
    from training.sft.collate import PackingCollator
    from training.sft.loss import label_position_loss

    loaded = load_model(spec)
    dataset = SFTDataset(load_samples(synth_dir, limit=6), loaded.processor, loaded.arch, 4096)
    features = [dataset[i] for i in range(6)]
    pad = loaded.tokenizer.pad_token_id
    padded = SFTCollator(pad)(features)
    longest = max(len(ids) for ids in dataset.input_ids)
    packed = PackingCollator(pad, max_length=2 * longest)(features)
    assert packed["input_ids"].shape[0] < 6 and "attention_mask" not in packed
    n_labels = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int((packed["labels"][:, 1:] != IGNORE_INDEX).sum()) == n_labels

    def loss_and_grads(batch):
        loaded.model.zero_grad()
        loss = label_position_loss(loaded.model.model, loaded.model.lm_head, batch)
        loss.backward()
        params = loaded.model.named_parameters()
        return loss.detach(), {n: p.grad.clone() for n, p in params if p.grad is not None}

    loss_padded, grads_padded = loss_and_grads(padded)
    loss_packed, grads_packed = loss_and_grads(packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    assert grads_packed.keys() == grads_padded.keys()
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packing_is_refused_for_mrope_models(synth_dir, tmp_path):
    config = SFTConfig(
        data=str(synth_dir), model="tiny:qwen2vl", out=str(tmp_path / "o"), max_steps=1,
        packing=True,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--packing.*--no-packing"):
        train(config)


def test_top_layer_lora_trains_only_the_top_layers(synth_dir, tmp_path):
    """`--lora-layers 1` on a 2-layer model: adapters in layer 1 only; after merging, layer 0
    and everything outside the adapted linears keep the base's weights."""
    from safetensors.torch import load_file

    from training.sft.model import prepare_model

    config = SFTConfig(
        data=str(synth_dir), model="tiny:llama", out=str(tmp_path / "o"), max_steps=3,
        lr=1e-2, lora_layers=1, packing=True, batch_size=4, save_steps=0,
    )  # fmt: skip
    trainable = [n for n, p in prepare_model(config).model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)
    train(config)
    base = load_file(load_model("tiny:llama").ref.path / "model.safetensors")
    tuned = load_file(tmp_path / "o" / "model.safetensors")
    changed = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert changed and all(".layers.1." in n for n in changed)
    with pytest.raises(ConfigError, match="--lora-layers"):
        SFTConfig(data="d", method="full", lora_layers=2)
    # the vision tower's numbered layers are not the language model's: they keep their adapters
    config = SFTConfig(data="d", model="tiny:smolvlm", freeze_vision=False, lora_layers=1)
    names = [n for n, p in prepare_model(config).model.named_parameters() if p.requires_grad]
    text = [n for n in names if ".text_model." in n]
    assert text and all(".layers.1." in n for n in text)
    vision = [n for n in names if ".vision_model." in n]
    assert any(".layers.0." in n for n in vision) and any(".layers.1." in n for n in vision)
