"""Calibrated GGUF quantization from Cas-SEAT samples. Importance matrices: computed with PyTorch
under llama.cpp's tensor names, written in llama.cpp's GGUF imatrix layout, used by llama.cpp's
quantizer (its weighted rounding error drops where the activations are large). GPTQ: q5_0/q4_0
blocks in ggml's exact byte layout, re-rounded so the layer outputs' error drops, same types and
size as llama.cpp's file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.config import load_config
from casseat_edge.errors import ConfigError, DataError
from casseat_edge.models import load_model, resolve_model
from tests.conftest import has_module, make_synth

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Cas-SEAT samples: a small benchmark through the procedural teacher."""
    return make_synth(tmp_path_factory.mktemp("imatrix-data"), n=30, seed=5)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-wide Llama (K-quant blocks fit its rows, unlike the 64-wide tiny) whose first layer
    reads a few input channels 8x louder: the outlier channels real LLMs have, where an
    importance matrix matters."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from casseat_edge.models.text import LlamaArch, save_tiny, seeded, tiny_llama_config

    out = tmp_path_factory.mktemp("wide-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny:llama").path)
    seeded(11)
    model = LlamaForCausalLM(
        tiny_llama_config(tokenizer, hidden_size=256, intermediate_size=512, num_hidden_layers=1)
    )
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[:16] = 8.0
    save_tiny(out, model, tokenizer, LlamaArch, seed=11, source="wide-llama")
    return out


def export(tmp_path: Path, model: str, quant: str, name: str, **kw):
    from export.gguf import GgufExportConfig, export_gguf

    values = {"model": model, "out": str(tmp_path / name), "quant": quant, **kw}
    return export_gguf(load_config(GgufExportConfig, overrides=values)), tmp_path / name


def weighted_errors(source: Path, quantized: Path, imatrix) -> dict[str, float]:
    """Per quantized tensor: sum over columns of importance x squared rounding error."""
    import gguf

    def tensors(path: Path) -> dict:
        return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}

    ref, got, weights = tensors(source), tensors(quantized), imatrix.means()
    errors = {}
    for name, tensor in got.items():
        if name not in weights or tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            continue
        deq = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        f32 = np.asarray(ref[name].data, dtype=np.float32).reshape(deq.shape)
        errors[name] = float((((deq - f32) ** 2) * weights[name]).sum())
    return errors


def test_computed_under_gguf_names_as_mean_squared_inputs(synth_dir):
    from casseat_edge.formats.ggml_quant import gguf_linear_names
    from export.gguf.imatrix import compute_imatrix

    loaded = load_model("tiny:smolvlm")
    imatrix = compute_imatrix(loaded, synth_dir, limit=4)
    names = gguf_linear_names(loaded)
    assert sorted(imatrix.sums) == sorted(names.values())  # every decoder linear, no vision one
    assert "token_embd.weight" in imatrix.sums  # the tied lm_head multiplies by token_embd
    assert imatrix.chunks == 4 and imatrix.datasets == [synth_dir.name]
    # o_proj of layer 0 by hand: its input is the attention output of the same conversations
    from casseat_edge.preprocess import encode
    from export.gguf.imatrix import calibration_conversations

    seen = []
    module = dict(loaded.model.named_modules())["model.text_model.layers.0.self_attn.o_proj"]
    handle = module.register_forward_hook(
        lambda m, i, o: seen.append(i[0].reshape(-1, i[0].shape[-1]))
    )
    with torch.inference_mode():
        for messages, image, caption in calibration_conversations(synth_dir, 4, False):
            loaded.model(**encode(loaded.processor, loaded.arch, messages, image, caption, False))
    handle.remove()
    x = torch.cat(seen).double()
    mean = imatrix.means()["blk.0.attn_output.weight"]
    np.testing.assert_allclose(mean, (x * x).mean(0).numpy(), rtol=1e-5)
    assert imatrix.counts["blk.0.attn_output.weight"] == x.shape[0]


def test_file_round_trips_in_llama_cpp_layout(synth_dir, tmp_path):
    import gguf

    from export.gguf.imatrix import compute_imatrix, read_imatrix, write_imatrix

    imatrix = compute_imatrix(load_model("tiny:llama"), synth_dir, limit=3)
    path = write_imatrix(imatrix, tmp_path / "imatrix.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.type").contents() == "imatrix"
    tensor = {t.name: t for t in reader.tensors}["blk.1.ffn_down.weight.in_sum2"]
    assert list(tensor.shape) == [128, 1]  # ne0 = input columns, ne1 = one matrix
    back = read_imatrix(path)
    assert back.counts == imatrix.counts and back.chunks == 3 and back.datasets == ["s"]
    for name, sums in imatrix.sums.items():
        np.testing.assert_allclose(back.sums[name], sums, rtol=1e-6)


def test_imatrix_lowers_the_weighted_rounding_error_llama_cpp_minimises(
    synth_dir, wide_llama, tmp_path
):
    """Same model, q4_k_m with and without the matrix: with it, llama.cpp's weighted error on the
    K-quant / q5_0 tensors is lower; the names reached the quantizer and the manifest says so."""
    import gguf

    plain, plain_dir = export(tmp_path, str(wide_llama), "q4_k_m", "plain", verify=False)
    summary, out = export(
        tmp_path, str(wide_llama), "q4_k_m", "imx", imatrix=str(synth_dir), calibration_samples=6
    )
    assert summary["passed"] and plain["imatrix"] is None
    assert summary["imatrix"]["source"] == "computed" and summary["imatrix"]["chunks"] == 6
    from export.gguf.imatrix import read_imatrix

    imatrix = read_imatrix(out / "imatrix.gguf")
    f32, _ = export(tmp_path, str(wide_llama), "f32", "f32", verify=False)
    source = tmp_path / "f32" / "model-f32.gguf"
    with_imx = weighted_errors(source, out / "model-q4_k_m.gguf", imatrix)
    without = weighted_errors(source, plain_dir / "model-q4_k_m.gguf", imatrix)
    assert len(with_imx) == 8  # 7 linears + token_embd (q4_k / q6_k here)
    assert all(with_imx[k] < 0.97 * without[k] for k in with_imx), (with_imx, without)
    assert sum(with_imx.values()) < 0.93 * sum(without.values())  # measured 0.89
    fields = gguf.GGUFReader(str(out / "model-q4_k_m.gguf")).fields
    assert fields["quantize.imatrix.file"].contents() == "imatrix.gguf"
    assert fields["quantize.imatrix.entries_count"].contents() == len(imatrix.sums)
    assert fields["quantize.imatrix.chunks_count"].contents() == 6
    assert (
        "quantize.imatrix.file" not in gguf.GGUFReader(str(plain_dir / "model-q4_k_m.gguf")).fields
    )

    # the saved matrix is reused as a file, and quantizes to the same bytes
    again, again_dir = export(
        tmp_path, str(wide_llama), "q4_k_m", "again", imatrix=str(out / "imatrix.gguf"),
        verify=False,
    )  # fmt: skip
    assert again["imatrix"]["source"] == "file"
    assert (again_dir / "model-q4_k_m.gguf").read_bytes() == (
        out / "model-q4_k_m.gguf"
    ).read_bytes()


def test_bad_imatrix_inputs_are_one_clear_error(synth_dir, wide_llama, tmp_path):
    from export.gguf import GgufExportConfig
    from export.gguf.imatrix import compute_imatrix, write_imatrix

    with pytest.raises(ConfigError, match="imatrix: applies only to quantized types"):
        load_config(GgufExportConfig, overrides={"quant": "f16", "imatrix": str(synth_dir)})
    with pytest.raises(DataError, match="no samples.jsonl"):
        export(tmp_path, "tiny:llama", "q8_0", "a", imatrix=str(tmp_path))
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a gguf")
    with pytest.raises(DataError, match="not a GGUF imatrix"):
        export(tmp_path, "tiny:llama", "q8_0", "b", imatrix=str(fake))
    # computed for the 64-wide tiny: same tensor names, a quarter of the columns
    other = write_imatrix(
        compute_imatrix(load_model("tiny:llama"), synth_dir, 2), tmp_path / "o.gguf"
    )
    with pytest.raises(
        DataError, match=r"blk.0.attn_k.weight has 64 values but the tensor has 256 input columns"
    ):
        export(tmp_path, str(wide_llama), "q4_k_m", "c", imatrix=str(other))
    assert not (tmp_path / "c").exists()  # nothing half-written is published

    args = ["export", "--model", "tiny:llama", "--out", str(tmp_path / "d"), "--quant", "f16"]
    result = CliRunner().invoke(main, [*args, "--imatrix", str(synth_dir)])
    assert result.exit_code == 2 and "imatrix: applies only to quantized types" in result.output
    result = CliRunner().invoke(main, [*args[:-1], "q8_0", "--imatrix", str(fake), "--json"])
    assert result.exit_code == 1 and "not a GGUF imatrix" in result.output


@pytest.mark.parametrize(("half", "kind"), [(16, "Q5_0"), (8, "Q4_0")])
def test_gptq_blocks_pack_to_ggml_bytes_and_beat_rounding_on_correlated_inputs(half, kind):
    import gguf

    from export.gguf.gptq import dequantize_blocks, gptq_blocks, output_error, pack_blocks

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(16, 128))
    mix = rng.normal(size=(128, 128)) * 0.3 + np.eye(128)  # correlated input columns
    x = rng.normal(size=(2000, 128)) @ mix
    h = x.T @ x / len(x)
    q, d = gptq_blocks(weights, h, half)
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    ours = dequantize_blocks(q, d, half)
    packed = pack_blocks(q, d, half).reshape(16, -1)
    np.testing.assert_array_equal(gguf.quants.dequantize(packed, qtype), ours)
    nearest = gguf.quants.dequantize(gguf.quants.quantize(weights.astype(np.float32), qtype), qtype)
    assert output_error(ours, weights, h) < 0.8 * output_error(nearest, weights, h)


def _gptq_by_the_book(weights: np.ndarray, h: np.ndarray, half: int):
    """GPTQ written plainly on [rows, columns] (the form gptq_blocks had before it moved to
    transposed blocks): one column at a time, its error spread right by the Cholesky factor."""
    w, h = torch.from_numpy(weights.copy()), torch.from_numpy(h.copy())
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += 0.01 * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(rows, cols, dtype=torch.uint8)
    scales = torch.zeros(rows, cols // 32, dtype=torch.float16)
    for start in range(0, cols, 32):
        stop = start + 32
        block, errors = w[:, start:stop].clone(), torch.zeros(rows, 32, dtype=w.dtype)
        peak = torch.gather(block, 1, block.abs().argmax(1, keepdim=True))
        d16 = (peak / -half).to(torch.float16)
        scales[:, start // 32] = d16[:, 0]
        d = d16.to(w.dtype)
        inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
        for j in range(32):
            column = block[:, j : j + 1]
            level = torch.clamp(torch.floor(column * inv + half + 0.5), 0, 2 * half - 1)
            q[:, start + j] = level[:, 0].to(torch.uint8)
            error = (column - (level - half) * d) / u[start + j, start + j]
            block[:, j:] -= error @ u[start + j : start + j + 1, start + j : stop]
            errors[:, j : j + 1] = error
        w[:, stop:] -= errors @ u[start:stop, stop:]
    return q.numpy(), scales.numpy()


@pytest.mark.parametrize(("rows", "cols", "half"), [(96, 160, 16), (40, 96, 8)])
def test_gptq_blocks_equal_the_plain_algorithm_bit_for_bit(rows, cols, half):
    from export.gguf.gptq import gptq_blocks

    rng = np.random.default_rng(rows)
    weights = rng.normal(size=(rows, cols)) * 0.05
    x = rng.normal(size=(400, cols)) @ (rng.normal(size=(cols, cols)) * 0.3 + np.eye(cols))
    x[:, 5] = 0.0  # a dead input column
    h = x.T @ x / len(x)
    q, d = gptq_blocks(weights, h, half)
    q_ref, d_ref = _gptq_by_the_book(weights, h, half)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)


def test_gptq_rows_are_independent_so_stacked_tensors_round_as_each_alone():
    """gptq_rewrite stacks the rows of tensors that share an input (q/k/v) into one problem:
    bit for bit what each tensor alone would get."""
    from export.gguf.gptq import gptq_blocks

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(48, 96)), rng.normal(size=(16, 96)) * 3
    x = rng.normal(size=(500, 96)) @ (rng.normal(size=(96, 96)) * 0.3 + np.eye(96))
    h = x.T @ x / len(x)
    q, d = gptq_blocks(np.concatenate([a, b]), h, 16)
    for rows, alone in [
        (slice(0, 48), gptq_blocks(a, h, 16)),
        (slice(48, 64), gptq_blocks(b, h, 16)),
    ]:
        np.testing.assert_array_equal(q[rows], alone[0])
        np.testing.assert_array_equal(d[rows], alone[1])


def test_gptq_export_keeps_llama_cpp_types_and_size_with_less_output_error(
    synth_dir, wide_llama, tmp_path
):
    import gguf

    from export.gguf.gptq import input_covariances, output_error

    plain, plain_dir = export(tmp_path, str(wide_llama), "q4_0", "plain", verify=False)
    summary, out = export(
        tmp_path, str(wide_llama), "q4_0", "gptq", gptq=str(synth_dir), calibration_samples=6
    )
    assert summary["passed"] and plain["gptq"] is None
    assert summary["gptq"]["tensors"] == 7 and summary["gptq"]["conversations"] == 6
    assert summary["gptq"]["output_error_vs_llama_cpp"] < 0.9
    ours, theirs = out / "model-q4_0.gguf", plain_dir / "model-q4_0.gguf"
    assert ours.stat().st_size == theirs.stat().st_size

    def tensors(path):
        return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}

    got, ref = tensors(ours), tensors(theirs)
    assert {k: t.tensor_type for k, t in got.items()} == {k: t.tensor_type for k, t in ref.items()}
    export(tmp_path, str(wide_llama), "f32", "f32", verify=False)
    f32 = tensors(tmp_path / "f32" / "model-f32.gguf")
    cov = input_covariances(load_model(str(wide_llama)), synth_dir, 6)
    # q/k/v and gate/up read one input: one sum each, so 4 GPTQ problems for 7 tensors
    assert cov.inputs == {"blk.0.attn_q.weight": "blk.0.attn_q.weight",
                          "blk.0.attn_k.weight": "blk.0.attn_q.weight",
                          "blk.0.attn_v.weight": "blk.0.attn_q.weight",
                          "blk.0.attn_output.weight": "blk.0.attn_output.weight",
                          "blk.0.ffn_gate.weight": "blk.0.ffn_gate.weight",
                          "blk.0.ffn_up.weight": "blk.0.ffn_gate.weight",
                          "blk.0.ffn_down.weight": "blk.0.ffn_down.weight"}  # fmt: skip
    assert len(cov.sums) == 4
    for name in cov.inputs:  # measured here from the files, not taken from the summary
        w = np.asarray(f32[name].data, dtype=np.float64)
        mine = gguf.quants.dequantize(got[name].data, got[name].tensor_type)
        plain_w = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type)
        assert output_error(mine, w, cov.mean(name)) < output_error(plain_w, w, cov.mean(name))
    assert "token_embd.weight" not in cov  # llama.cpp's q6_k rounding stays
    assert got["token_embd.weight"].data.tobytes() == ref["token_embd.weight"].data.tobytes()
