"""llama.cpp's weight rounding in torch (`casseat_edge.formats.ggml_quant`), checked against the
files llama.cpp's own quantizer writes: the per-tensor type recipe of each file type, q8_0 / q5_0
/ q4_0 values bit for bit, and q4_K / q6_K (no per-block scale search) within a bounded distance
of llama.cpp's rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from casseat_edge.config import load_config
from casseat_edge.formats.ggml_quant import (
    QAT_TYPES,
    fake_quantize,
    gguf_linear_names,
    more_bits,
    tensor_type,
    tensor_types,
)
from casseat_edge.models import load_model, resolve_model
from tests.conftest import has_module

needs_llama = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)


def narrow_llama(out: Path, hidden: int, intermediate: int, layers: int, tied: bool) -> Path:
    """A Llama whose rows are `hidden` wide (attention, gate/up) and `intermediate` wide
    (ffn_down): 96 / 256 is SmolLM2's situation (576 / 1536), where K-quant blocks fit only the
    down projections."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from casseat_edge.models.text import LlamaArch, save_tiny, seeded, tiny_llama_config

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny:llama").path)
    seeded(3)
    config = tiny_llama_config(
        tokenizer,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        tie_word_embeddings=tied,
    )
    save_tiny(out, LlamaForCausalLM(config), tokenizer, LlamaArch, seed=3, source="narrow-llama")
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ggml-quant")
    return {
        "smollm2-like": narrow_llama(root / "a", 96, 256, layers=10, tied=True),
        "k-quant wide": narrow_llama(root / "b", 256, 512, layers=8, tied=False),
    }


def gguf_tensors(model: Path, quant: str, out: Path) -> dict:
    import gguf

    from export.gguf import GgufExportConfig, export_gguf

    values = {"model": str(model), "out": str(out), "quant": quant, "verify": False}
    summary = export_gguf(load_config(GgufExportConfig, overrides=values))
    name = next(f["file"] for f in summary["files"] if f["role"] == "text")
    return {t.name: t for t in gguf.GGUFReader(str(out / name)).tensors}


def test_more_bits_is_llama_cpps_layer_pattern():
    # SmolLM2's 30 layers: the 14 that q4_k_m's q6_K attn_v / ffn_down land on in its file
    assert [i for i in range(30) if more_bits(i, 30)] == [
        0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29
    ]  # fmt: skip


def test_recipe_edges():
    assert tensor_type("q4_k_m", "blk.3.attn_q.weight", 576, 30, True) == "q5_0"  # fallback
    assert tensor_type("q4_k_m", "blk.3.ffn_down.weight", 1536, 30, True) == "q4_K"
    assert tensor_type("q4_k_m", "blk.2.ffn_down.weight", 1536, 30, True) == "q6_K"
    assert tensor_type("q4_k_m", "blk.2.attn_v.weight", 576, 30, True) == "q8_0"
    assert tensor_type("q4_k_m", "token_embd.weight", 576, 30, True) == "q8_0"
    assert tensor_type("q4_k_m", "token_embd.weight", 512, 30, False) == "q4_K"
    assert tensor_type("q8_0", "output.weight", 512, 30, False) == "q8_0"
    assert tensor_type("q4_0", "output.weight", 512, 30, False) == "q6_K"
    with pytest.raises(ValueError, match="q4_k_s"):
        tensor_type("q4_k_s", "blk.0.attn_q.weight", 512, 30, True)


@pytest.mark.parametrize("values", ["q8_0", "q5_0", "q4_0"])
def test_block_rounding_bit_exact_with_ggml_reference(values):
    """gguf-py's numpy quantizers are ggml's reference rounding bit for bit; ours must match,
    including all-zero blocks, exact halves and a block whose peak is negative."""
    import gguf

    torch.manual_seed(0)
    w = torch.randn(48, 96) * 0.05
    w[0, :32] = 0.0
    w[1, :32] = torch.arange(32) / 64.0 - 0.25  # many values on exact level boundaries
    w[2, 5] = -1.0
    kind = getattr(gguf.GGMLQuantizationType, values.upper())
    ref = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), kind), kind)
    assert np.array_equal(fake_quantize(w, values).numpy(), ref)


def test_bad_shapes_and_types():
    with pytest.raises(ValueError, match="multiple of 256"):
        fake_quantize(torch.zeros(4, 96), "q4_K")
    with pytest.raises(ValueError, match="q3_K"):
        fake_quantize(torch.zeros(4, 256), "q3_K")
    assert torch.equal(
        fake_quantize(torch.full((2, 32), 0.1), "f16"), torch.full((2, 32), 0.1).half().float()
    )


@needs_llama
@pytest.mark.parametrize("ftype", QAT_TYPES)
@pytest.mark.parametrize("which", ["smollm2-like", "k-quant wide"])
def test_recipe_and_values_match_llama_cpp(models, tmp_path, ftype, which):
    """Every matrix of llama.cpp's file has the type `tensor_types` predicts, and its values are
    `fake_quantize` of the f32 file's: exactly for the 32-blocks, and for q4_K / q6_K with a
    root-mean-square error within 15% of llama.cpp's searched rounding."""
    import gguf

    model = models[which]
    loaded = load_model(str(model))
    names = gguf_linear_names(loaded)
    predicted = {
        names.get(m, "token_embd.weight"): t for m, t in tensor_types(ftype, loaded).items()
    }
    source = gguf_tensors(model, "f32", tmp_path / "f32")
    quantized = gguf_tensors(model, ftype, tmp_path / ftype)
    matrices = {n: t for n, t in quantized.items() if len(t.shape) == 2 and n.endswith(".weight")}
    assert set(matrices) == set(predicted)
    seen = set()
    for name, tensor in matrices.items():
        kind = tensor.tensor_type.name.lower().replace("_k", "_K")
        assert kind == predicted[name], name
        seen.add(kind)
        f32 = torch.from_numpy(np.asarray(source[name].data, dtype=np.float32).copy())
        f32 = f32.reshape(-1, int(tensor.shape[0]))
        theirs = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
        ours = fake_quantize(f32, kind)
        if kind.endswith("_K"):
            ratio = (ours - f32).pow(2).mean().sqrt() / (theirs - f32).pow(2).mean().sqrt()
            assert 0.9 < ratio < 1.15, (name, kind, float(ratio))
        else:
            assert torch.equal(ours, theirs.reshape(ours.shape)), (name, kind)
    if ftype == "q4_k_m":
        expected = {"q5_0", "q4_K", "q6_K", "q8_0"} if which == "smollm2-like" else {"q4_K", "q6_K"}
        assert seen == expected
