"""Quantization-aware LoRA (`train --qat`): the hooked model computes exactly what the merged and
rounded model computes, gradients reach the adapter (straight through the rounding), each matrix
is rounded once per optimizer step, and the saved model is the plain merged one."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from casseat_edge.errors import ConfigError
from casseat_edge.formats.ggml_quant import fake_quantize, tensor_types
from casseat_edge.models import load_model
from tests.conftest import make_synth
from training.sft import SFTConfig, train
from training.sft.model import prepare_model


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth(tmp_path_factory.mktemp("qat-data"), n=30, seed=4)


def config(synth_dir: Path, out: Path, **kw) -> SFTConfig:
    values = dict(
        data=str(synth_dir), model="tiny:llama", out=str(out), qat="q4_k_m", lora_dropout=0.0,
        save_steps=0, batch_size=2, seed=0, captions=True,
    )  # fmt: skip
    values.update(kw)
    return SFTConfig(**values)


def randomize_adapters(model: torch.nn.Module) -> None:
    """A trained-looking adapter: B is zero at init, which would make every check trivial."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_config_refuses_unknown_types_and_other_methods(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match="--qat: .*q4_k_s.*q4_k_m"):
        config(synth_dir, tmp_path / "a", qat="q4_k_s")
    with pytest.raises(ConfigError, match="--qat: only with --method lora"):
        config(synth_dir, tmp_path / "b", method="full")


def test_forward_is_the_merged_model_rounded_and_detach_restores(synth_dir, tmp_path):
    loaded = prepare_model(config(synth_dir, tmp_path / "m"))
    model = loaded.model
    randomize_adapters(model)
    qat = model.casseat_qat
    ids = torch.tensor([[1, 5, 9, 200, 31, 7, 64, 2]])
    model.eval()
    with torch.no_grad():
        hooked = model(input_ids=ids).logits

    # reference: merge the adapter into a copy, then round every matrix as the GGUF will
    reference = copy.deepcopy(model)
    reference.casseat_qat.detach()
    plain = reference.merge_and_unload()
    plain_loaded = copy.copy(loaded)
    plain_loaded.model = plain
    types = tensor_types("q4_k_m", plain_loaded)
    assert set(types.values()) == {"q5_0", "q8_0"}  # 64-wide rows: fallbacks; tied embedding
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, kind in types.items():
            weight = modules[name].weight
            weight.copy_(fake_quantize(weight, kind))
        rounded = plain(input_ids=ids).logits
    assert torch.allclose(hooked, rounded, atol=1e-5, rtol=0)

    unrounded_model = copy.deepcopy(model)
    unrounded_model.casseat_qat.detach()
    with torch.no_grad():
        unrounded = unrounded_model(input_ids=ids).logits
    assert not torch.allclose(hooked, unrounded, atol=1e-3)  # the rounding is visible
    qat.detach()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, unrounded)


def test_gradient_reaches_every_adapter_through_the_rounding(synth_dir, tmp_path):
    loaded = prepare_model(config(synth_dir, tmp_path / "g"))
    model = loaded.model
    randomize_adapters(model)
    ids = torch.tensor([[1, 5, 9, 200, 31, 7, 64, 2]])
    model(input_ids=ids, labels=ids).loss.backward()
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert adapters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())
    frozen = [p for n, p in model.named_parameters() if "base_layer" in n]
    assert frozen and all(p.grad is None for p in frozen)


def test_training_rounds_once_per_step_and_saves_the_plain_merge(synth_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(config(synth_dir, out, max_steps=3))
    matrices = 2 * 7  # tiny:llama: 2 layers x 7 adapted linears (the tied lm_head: once, frozen)
    qat = summary["qat"]
    # the last layer's attn_v and ffn_down get q6_K (q8_0 in 64-wide rows), so does the output
    assert qat["ftype"] == "q4_k_m" and qat["types"] == {"q5_0": matrices - 2, "q8_0": 3}
    # one rounding per matrix at each of the 3 steps' forward passes (the adapter changes
    # between steps; the backward pass and later micro-batches reuse it)
    assert qat["roundings"] == 3 * matrices
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["config"]["qat"] == "q4_k_m"
    assert manifest["metrics"]["qat"]["roundings"] == 3 * matrices

    # the saved weights are W + BA, not rounded: the tied embedding equals the base's exactly
    base, trained = load_model("tiny:llama").model, load_model(str(out)).model
    assert torch.equal(trained.get_input_embeddings().weight, base.get_input_embeddings().weight)
    name = "model.layers.0.self_attn.q_proj.weight"
    weight = trained.state_dict()[name]
    assert not torch.equal(weight, base.state_dict()[name])
    assert not torch.equal(weight, fake_quantize(weight, "q5_0"))
