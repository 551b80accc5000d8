"""ONNX export (transformers.js layout): tracing, int8/int4 quantization and verification in
onnxruntime. (tests/test_transformersjs.py runs the exports in transformers.js itself.)

Each tiny model is exported once per module in fp32, int8 and int4 (~10 s each: tracing, the
quantizers, and verification against PyTorch). The embedded SmolLM2 export (~90 s) is slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.config import load_config
from casseat_edge.errors import ConfigError, UnsupportedArchError
from casseat_edge.formats.onnx_split import SplitOnnxModel, mrope_positions
from tests.conftest import has_module

pytestmark = pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime")
TINY = ["tiny:llama", "tiny:smolvlm", "tiny:qwen2vl"]
ALL = ("fp32", "int8", "int4")


def export(out: Path, model: str, quant: tuple[str, ...] = ALL, **kw):
    from export.onnx import OnnxExportConfig, export_onnx

    values = {"model": model, "out": str(out), "quant": quant, **kw}
    return export_onnx(load_config(OnnxExportConfig, overrides=values))


@pytest.fixture(scope="module", params=TINY)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("onnx") / request.param.replace(":", "_")
    return request.param, export(out, request.param), out


def test_files_manifest_and_sizes(exported) -> None:
    model, summary, out = exported
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["kind"] == "export" and manifest["format"] == "onnx"
    assert manifest["inputs"]["config.json"] and manifest["passed"] is True
    vision = model != "tiny:llama"
    parts = {"vision_encoder", "embed_tokens", "decoder_model_merged"} if vision else {"model"}
    main = "decoder_model_merged" if vision else "model"
    for quant in ALL:
        files = manifest["onnx"]["variants"][quant]
        assert set(files) == parts and all((out / f).is_file() for f in files.values())
    dtypes = manifest["onnx"]["transformers_js_dtype"]
    assert dtypes["fp32"][main] == "fp32" and dtypes["int4"][main] == "q4"
    assert manifest["onnx"]["variants"]["int4"][main] == f"onnx/{main}_q4.onnx"
    names = {f["file"]: f for f in summary["files"]}
    assert 31.9 < names[f"onnx/{main}.onnx"]["bits_per_weight"] < 33
    assert 7.5 < names[f"onnx/{main}_int8.onnx"]["bits_per_weight"] < 10
    # the merged text graph carries the int8 embedding table beside the 4-bit matrices
    assert 4 < names[f"onnx/{main}_q4.onnx"]["bits_per_weight"] < (6 if vision else 7.5)
    sizes = {v["quant"]: v["size_mb"] for v in summary["variants"]}
    assert sizes["fp32"] > 3 * sizes["int8"] > 3 * sizes["int4"] / 1.5
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file()
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]  # where transformers.js reads it
    assert (out / "preprocessor_config.json").is_file() == vision


def test_every_variant_loads_and_verification_passes(exported) -> None:
    model, summary, out = exported
    checks = {"logits", "kv_cache"} | (
        {"vision", "image_logits"} if model != "tiny:llama" else set()
    )
    for quant in ALL:
        rows = {r["check"]: r for r in summary["parity"] if r["type"] == quant}
        assert set(rows) == checks and all(r["passed"] for r in rows.values()), rows
        if quant == "fp32":  # the same arithmetic: tight
            assert all(r.get("rel_max_abs", 0) < 1e-5 for r in rows.values()), rows
            assert rows["logits"]["top1"] == 1.0
        else:
            assert rows["logits"]["top1"] >= 0.9 and rows["logits"]["kl"] < 0.01
        runner = SplitOnnxModel(out, quant)
        assert runner.sessions and runner.quant == quant


def test_qwen2vl_positions_match_transformers_get_rope_index(tmp_path) -> None:
    """M-RoPE ids fed to the decoder equal what transformers' Qwen2-VL computes for the prompt."""
    import torch

    from casseat_edge.models import load_model
    from casseat_edge.preprocess import encode, user_messages
    from export.onnx.verify import parity_image

    loaded = load_model("tiny:qwen2vl")
    inputs = encode(loaded.processor, loaded.arch, user_messages("How many?"), parity_image())
    ids = inputs["input_ids"]
    with torch.no_grad():
        expected, delta = loaded.model.model.get_rope_index(
            ids, inputs["image_grid_thw"], None, inputs["attention_mask"]
        )
    config = loaded.model.config
    info = {"image_token_id": config.image_token_id, "spatial_merge_size": 2,
            "vision_start_token_id": config.vision_start_token_id}  # fmt: skip
    ours, our_delta = mrope_positions(ids[0].tolist(), inputs["image_grid_thw"].numpy(), info)
    assert np.array_equal(ours, expected[:, 0].numpy()) and our_delta == int(delta[0, 0])
    assert our_delta != 0  # the image really shifted the text positions


def test_idefics3_vision_encoder_masks_like_transformers() -> None:
    """pixel_attention_mask is used as transformers uses it: a padding image is dropped, a partly
    padded frame gets the patch mask and the bucketed position ids of its real patches."""
    import onnxruntime as ort
    import torch

    from casseat_edge.models import load_model
    from tests.tiny_exports import exported_onnx

    loaded = load_model("tiny:smolvlm")
    side = loaded.model.config.vision_config.image_size
    pixels = np.random.default_rng(0).standard_normal((1, 3, 3, side, side)).astype(np.float32)
    mask = np.ones((1, 3, side, side), bool)
    rows, cols = side * 5 // 8, side * 3 // 8  # whole patches (16 px) of a 64 px frame
    pixels[0, 1, :, rows:], pixels[0, 1, :, :, cols:], pixels[0, 2] = 0, 0, 0
    mask[0, 1, rows:], mask[0, 1, :, cols:], mask[0, 2] = False, False, False
    with torch.no_grad():
        ref = loaded.model.model.get_image_features(
            torch.from_numpy(pixels), torch.from_numpy(mask)
        )
    session = ort.InferenceSession(str(exported_onnx("tiny:smolvlm") / "onnx/vision_encoder.onnx"))
    got = session.run(None, {"pixel_values": pixels, "pixel_attention_mask": mask})[0]
    assert got.shape == ref.shape == (2, *ref.shape[1:])
    assert np.abs(got - ref.numpy()).max() < 1e-5 * np.abs(ref.numpy()).max()
    unmasked = {"pixel_values": pixels[:, 1:2], "pixel_attention_mask": np.ones_like(mask[:, 1:2])}
    assert not np.allclose(session.run(None, unmasked)[0][0], got[1], atol=1e-3)  # mask is used


def _perturbed(real):
    """Write the real graph, then scale its matrices: a broken export to catch."""

    def write(model, family, path, opset, *args):
        import onnx
        from onnx import numpy_helper

        info = real(model, family, path, opset, *args)
        graph = onnx.load(str(path))
        for init in graph.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        onnx.save(graph, str(path))
        return info

    return write


def test_broken_export_fails_verification_with_exit_3(tmp_path, monkeypatch) -> None:
    import export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "export_decoder", _perturbed(onnx_export.export_decoder))
    out = tmp_path / "broken"
    args = ["export", "--format", "onnx", "--model", "tiny:llama", "--out", str(out),
            "--quant", "fp32", "--positions", "32"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert "verification failed" in result.stderr and "logits (fp32)" in result.stderr
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["passed"] is False and (out / "onnx/model.onnx").is_file()


@pytest.mark.skipif(not has_module("optimum.exporters.onnx"), reason="needs optimum-onnx (dev)")
def test_text_decoder_matches_optimum_export(tmp_path) -> None:
    import onnxruntime as ort
    from optimum.exporters.onnx import main_export

    from casseat_edge.models import load_model, resolve_model
    from export.gguf.verify import parity_ids

    ref = resolve_model("tiny:llama")
    main_export(str(ref.path), tmp_path / "optimum", task="text-generation-with-past",
                do_validation=False)  # fmt: skip
    export(tmp_path / "ours", "tiny:llama", ("fp32",), verify=False)
    ids = parity_ids(load_model(ref).tokenizer, 64)
    theirs = ort.InferenceSession(str(tmp_path / "optimum/model.onnx"))
    feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, 64), np.int64),
             "position_ids": np.arange(64)[None]}  # fmt: skip
    for item in theirs.get_inputs():
        if item.name.startswith("past_key_values"):
            feeds[item.name] = np.zeros((1, item.shape[1], 0, item.shape[3]), np.float32)
    optimum_logits = theirs.run(["logits"], feeds)[0][0]
    runner = SplitOnnxModel(tmp_path / "ours")
    ours = runner.sessions["model"]  # the same graph interface transformers.js loads as `model`
    for kind in ("get_inputs", "get_outputs"):
        assert {i.name for i in getattr(ours, kind)()} == {i.name for i in getattr(theirs, kind)()}
    our_logits, _ = runner.forward(ids, 0, None)
    assert np.abs(our_logits - optimum_logits).max() < 1e-5 * np.abs(optimum_logits).max()


def test_config_errors_and_unsupported_arch(tmp_path) -> None:
    from export.onnx import OnnxExportConfig

    with pytest.raises(ConfigError, match="quant='int3'.*positions=4"):
        load_config(OnnxExportConfig, overrides={"quant": ("int3",), "positions": 4})
    with pytest.raises(UnsupportedArchError, match="ONNX export of 'Qwen2_5_VL.*supported"):
        export(tmp_path / "x", "tiny:qwen2.5vl", ("fp32",))


def test_cli_export_json_and_quant_flags(tmp_path) -> None:
    out = tmp_path / "cli"
    args = ["export", "--format", "onnx", "--model", "tiny:llama", "--out", str(out),
            "--quant", "fp32", "--quant", "int4", "--positions", "32", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "onnx" and [v["quant"] for v in doc["variants"]] == ["fp32", "int4"]
    assert doc["passed"] is True and {r["type"] for r in doc["parity"]} == {"fp32", "int4"}
    two = CliRunner().invoke(main, ["export", "--format", "gguf", "--quant", "f16,q8_0"])
    assert two.exit_code == 2 and "takes one --quant" in two.stderr
    other = CliRunner().invoke(
        main, ["export", "--format", "onnx", "--out", str(tmp_path / "y"), "--mmproj-quant", "f16"]
    )
    assert other.exit_code == 2 and "mmproj_quant" in other.stderr


@pytest.mark.slow
def test_smollm2_all_variants_pass(tmp_path) -> None:
    summary = export(tmp_path / "smollm2", "embedded:smollm2-135m-instruct")
    assert summary["passed"] is True
    rows = {(r["check"], r["type"]): r for r in summary["parity"]}
    assert rows[("logits", "fp32")]["rel_max_abs"] < 1e-4
    assert rows[("logits", "int8")]["top1"] >= 0.88 and rows[("logits", "int4")]["top1"] >= 0.6
    sizes = {v["quant"]: v["size_mb"] for v in summary["variants"]}
    assert sizes["fp32"] > 600 and sizes["int8"] < 200 and sizes["int4"] < 120
