"""GGUF export: our converter (text + idefics3 mmproj), llama.cpp's quantizer and verification.

Tiny-model tests take ~10-25 s each (most of it llama.cpp evaluating a 49k-vocab model with all
logits kept); the embedded SmolLM2 f16 test ~40 s (marked slow). Every written GGUF is re-read
with `gguf.GGUFReader`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.config import load_config
from casseat_edge.errors import ModelSpecError, UnsupportedArchError
from tests.conftest import has_module

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)


def export(tmp_path: Path, model: str, quant: str = "f16", **kw):
    from export.gguf import GgufExportConfig, export_gguf

    out = tmp_path / f"{model.replace(':', '_')}-{quant}"
    values = {"model": model, "out": str(out), "quant": quant, **kw}
    return export_gguf(load_config(GgufExportConfig, overrides=values)), out


def fields(path: Path) -> tuple[dict, list[str]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {
        k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")
    }
    meta.update({k: reader.fields[k].contents() for k in reader.fields if k.endswith("_id")})
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
        meta[key] = reader.fields[key].contents() if key in reader.fields else None
    if "tokenizer.ggml.token_type" in reader.fields:
        meta["token_type"] = reader.fields["tokenizer.ggml.token_type"].contents()
        meta["tokens"] = reader.fields["tokenizer.ggml.tokens"].contents()
        meta["merges"] = len(reader.fields["tokenizer.ggml.merges"].contents())
    return meta, [t.name for t in reader.tensors]


def rows(summary: dict, check: str) -> list[dict]:
    return [r for r in summary["parity"] if r["check"] == check]


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """GGUF tensor shapes in PyTorch order (GGUFReader lists ggml's reversed dims)."""
    from gguf import GGUFReader

    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in GGUFReader(str(path)).tensors}


def check_text_gguf(path: Path, arch: str, loaded) -> None:
    """Re-read a text GGUF: architecture, gpt2 tokenizer with one token per embedding row, the
    chat template, block count and the tensor count/shapes the source model implies."""
    meta, names = fields(path)
    config = loaded.model.config.get_text_config()
    assert meta["general.architecture"] == arch
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert len(meta["tokens"]) == config.vocab_size >= len(loaded.tokenizer)
    template = getattr(loaded.processor, "chat_template", None) or loaded.tokenizer.chat_template
    assert meta["tokenizer.chat_template"] == template
    assert meta[f"{arch}.block_count"] == config.num_hidden_layers
    per_block = {n.split(".", 2)[2] for n in names if n.startswith("blk.0.")}
    tied = 0 if getattr(config, "tie_word_embeddings", False) else 1  # output.weight
    assert len(names) == config.num_hidden_layers * len(per_block) + 2 + tied
    assert tensor_shapes(path)["token_embd.weight"] == (config.vocab_size, config.hidden_size)


def test_rope_permutation_keeps_attention_scores():
    """HF rotate_half rope on (W x) must equal llama.cpp's adjacent-pair rope on (P W x)."""
    from export.gguf.text import permute_for_rope

    rng = np.random.default_rng(0)
    heads, head_dim, hidden, pos = 2, 8, 16, 5
    wq, wk = rng.normal(size=(2, heads * head_dim, hidden))
    x, y = rng.normal(size=(2, hidden))
    theta = pos / 10000 ** (np.arange(0, head_dim, 2) / head_dim)
    cos, sin = np.cos(theta), np.sin(theta)

    def rope_halves(v):  # HF: pairs (i, i + d/2)
        a, b = v[..., : head_dim // 2], v[..., head_dim // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    def rope_pairs(v):  # llama.cpp llama: pairs (2i, 2i + 1)
        a, b = v[..., 0::2], v[..., 1::2]
        return np.stack([a * cos - b * sin, b * cos + a * sin], -1).reshape(v.shape)

    hf = [rope_halves((w @ v).reshape(heads, head_dim)) for w, v in ((wq, x), (wk, y))]
    cpp = [
        rope_pairs((permute_for_rope(w, heads) @ v).reshape(heads, head_dim))
        for w, v in ((wq, x), (wk, y))
    ]
    np.testing.assert_allclose((hf[0] * hf[1]).sum(-1), (cpp[0] * cpp[1]).sum(-1), atol=1e-10)
    assert not np.allclose(permute_for_rope(wq, heads), wq)


def test_tokenizer_tables_mark_specials_and_padding():
    from casseat_edge.models import load_model
    from export.gguf.text import CONTROL, NORMAL, UNUSED, tokenizer_tables

    tok = load_model("tiny:llama").tokenizer
    tables = tokenizer_tables(tok, len(tok) + 3)
    assert tables["pre"] == "smollm"
    assert tables["types"][tok.convert_tokens_to_ids("<|im_start|>")] == CONTROL
    assert tables["types"][tok.convert_tokens_to_ids("Ġthe")] == NORMAL
    assert tables["types"][-3:] == [UNUSED] * 3 and tables["tokens"][-1] == f"[PAD{len(tok) + 2}]"
    assert all(" " in m for m in tables["merges"][:100])
    with pytest.raises(UnsupportedArchError, match="embeddings"):
        tokenizer_tables(tok, len(tok) - 1)


def test_tiny_llama_f32_gguf_reads_back_and_matches_torch(tmp_path):
    from casseat_edge.models import load_model

    summary, out = export(tmp_path, "tiny:llama", "f32")
    assert summary["passed"] is True and [f["role"] for f in summary["files"]] == ["text"]
    check_text_gguf(out / "model-f32.gguf", "llama", load_model("tiny:llama"))
    meta, tensors = fields(out / "model-f32.gguf")
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["token_type"][1] == 3 and meta["merges"] > 40000
    assert {"token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= set(tensors)
    assert "output.weight" not in tensors  # tied embeddings
    logits = rows(summary, "logits")[0]
    assert logits["top1"] == 1.0 and logits["rel_max_abs"] < 2e-3 and logits["positions"] == 200
    assert rows(summary, "tokenizer")[0]["mismatches"] == []
    assert rows(summary, "generate")[0]["tokens"] > 0
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["kind"] == "export" and manifest["format"] == "gguf"
    assert manifest["files"][0]["bits_per_weight"] == pytest.approx(32.0, abs=0.01)
    assert set(manifest["inputs"]) >= {"config.json", "model.safetensors"}


@pytest.mark.parametrize(
    ("quant", "mmproj_quant", "bpw"),
    [("f16", "f32", (15.9, 16.1)), ("q8_0", "q8_0", (8.4, 8.6)), ("q4_k_m", "f16", (4.0, 8.6))],
)
def test_tiny_smolvlm_text_and_mmproj(tmp_path, quant, mmproj_quant, bpw):
    from casseat_edge.models import load_model

    summary, out = export(tmp_path, "tiny:smolvlm", quant, mmproj_quant=mmproj_quant)
    assert summary["passed"] is True, summary["parity"]
    text, mmproj = summary["files"]
    assert bpw[0] <= text["bits_per_weight"] <= bpw[1]
    check_text_gguf(out / text["file"], "llama", load_model("tiny:smolvlm"))
    meta, tensors = fields(out / mmproj["file"])
    assert meta["general.architecture"] == "clip"
    assert meta["clip.projector_type"] == "idefics3" and meta["clip.has_vision_encoder"] is True
    assert meta["clip.vision.projector.scale_factor"] == 2
    assert meta["clip.vision.projection_dim"] == 64 and meta["clip.vision.image_size"] == 64
    assert meta["clip.vision.image_mean"] == pytest.approx([0.5] * 3)
    assert {"v.patch_embd.weight", "v.blk.1.attn_q.weight", "mm.model.fc.weight"} <= set(tensors)
    assert not any(t.startswith(("blk.", "token_embd")) for t in tensors)
    assert len(tensors) == 2 * 16 + 6  # 16 per block; patch w/b, positions, post_ln w/b, fc
    assert tensor_shapes(out / mmproj["file"])["v.position_embd.weight"] == (16, 64)
    # one tile per image (HF's do_image_splitting=False): libmtmd makes a 1x1 grid + overview
    assert meta["clip.vision.preproc_image_size"] == 64
    vision = rows(summary, "vision")[0]
    assert vision["image_tokens"] > 0 and vision["logit_change"] > 1e-3
    embeddings = rows(summary, "image_embeddings")[0]
    assert embeddings["passed"] and embeddings["type"] == mmproj_quant
    assert not rows(summary, "image_logits")  # prompt layouts differ (tile + overview vs global)


def test_mmproj_q8_0_reads_back(tmp_path):
    import gguf

    from casseat_edge.models import load_model
    from export.gguf.mmproj import write_mmproj

    path = write_mmproj(load_model("tiny:smolvlm"), tmp_path / "mmproj-q8_0.gguf", "q8_0")
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["v.blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["v.position_embd.weight"] == gguf.GGMLQuantizationType.F32


def test_wrong_rope_layout_fails_parity_after_writing(tmp_path, monkeypatch):
    """Without the q/k permutation llama.cpp computes other logits: exit 3, artifact kept."""
    from export.gguf import text

    monkeypatch.setattr(text, "permute_for_rope", lambda weight, n_heads: weight)
    out = tmp_path / "bad"
    result = CliRunner().invoke(
        main, ["export", "--model", "tiny:llama", "--out", str(out), "--quant", "f32", "--json"]
    )
    assert result.exit_code == 3, result.output
    assert "logits" in result.output and "rel max abs" in result.output
    manifest = json.loads((out / "casseat.json").read_text())
    assert manifest["passed"] is False and (out / "model-f32.gguf").is_file()


def test_vision_check_fails_when_the_projector_ignores_the_image(tmp_path, monkeypatch):
    from casseat_edge.models import load_model
    from export.gguf import mmproj
    from export.gguf.text import text_source, write_text_gguf
    from export.gguf.verify import verify_vision

    original = mmproj.mmproj_tensors

    def blind(model, spec):
        tensors = original(model, spec)
        tensors["mm.model.fc.weight"] = np.zeros_like(tensors["mm.model.fc.weight"])
        return tensors

    monkeypatch.setattr(mmproj, "mmproj_tensors", blind)
    loaded = load_model("tiny:smolvlm")
    text_path = write_text_gguf(text_source(loaded), tmp_path / "model-f16.gguf", "f16")
    proj = mmproj.write_mmproj(loaded, tmp_path / "mmproj-f16.gguf", "f16")
    (row,) = verify_vision(text_path, proj, 64)
    assert row["passed"] is False and row["logit_change"] <= 1e-3


def test_no_verify_writes_without_parity(tmp_path):
    summary, out = export(tmp_path, "tiny:llama", "q4_0", verify=False)
    assert summary["parity"] == [] and summary["passed"] is None
    assert (out / "model-q4_0.gguf").is_file() and not list(out.glob(".*tmp*"))


def test_unsupported_architecture_lists_supported(tmp_path):
    source = tmp_path / "gpt2"
    source.mkdir()
    (source / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(UnsupportedArchError, match="GPT2LMHeadModel.*supported: .*Qwen2VL"):
        export(tmp_path, str(source))


def test_lora_adapter_directory_is_refused(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelSpecError, match="LoRA adapter.*merge"):
        export(tmp_path, str(adapter))


def test_cli_errors_existing_out_and_bad_quant(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", "--model", "tiny:llama", "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = CliRunner().invoke(main, ["export", "--out", str(tmp_path / "x"), "--quant", "q9"])
    assert result.exit_code == 2 and "q4_k_m" in result.output
    result = CliRunner().invoke(main, ["export", "--format", "tflite", "--out", str(out)])
    assert result.exit_code == 2 and "gguf" in result.output


@pytest.mark.slow
def test_embedded_smollm2_f16_top1_over_200_positions(tmp_path):
    """The real SmolLM2-135M at f16: top-1 agreement >= 0.98 over 200 positions (~40 s)."""
    from casseat_edge.models import load_model

    summary, out = export(tmp_path, "embedded:smollm2-135m-instruct", "f16")
    logits = rows(summary, "logits")[0]
    assert logits["positions"] == 200 and logits["top1"] >= 0.98, logits
    assert summary["passed"] is True
    check_text_gguf(out / "model-f16.gguf", "llama", load_model("embedded:smollm2-135m-instruct"))
    meta, tensors = fields(out / "model-f16.gguf")
    assert meta["llama.block_count"] == 30 and len(tensors) == 30 * 9 + 2


def test_tiny_qwen2_text_gguf_matches_torch(tmp_path):
    """Qwen2 keeps HF's rope layout (no q/k permutation) and has q/k/v biases."""
    from casseat_edge.models import load_model

    summary, out = export(tmp_path, "tiny:qwen2", "f32")
    assert summary["passed"] is True, summary["parity"]
    check_text_gguf(out / "model-f32.gguf", "qwen2", load_model("tiny:qwen2"))
    meta, tensors = fields(out / "model-f32.gguf")
    assert meta["general.architecture"] == "qwen2" and "blk.0.attn_q.bias" in tensors


def test_non_finite_llama_logits_fail_the_row():
    from export.gguf.verify import logits_row

    ref = np.random.default_rng(0).normal(size=(8, 32))
    assert logits_row(ref, ref.copy(), "f16", "m.gguf")["passed"] is True
    bad = ref.copy()
    bad[3, 5] = np.nan
    row = logits_row(ref, bad, "f16", "m.gguf")
    assert row["passed"] is False and "non-finite" in row["failures"][0]


def test_cli_json_document(tmp_path):
    out = tmp_path / "cli"
    args = ["export", "--model", "tiny:llama", "--out", str(out), "--quant", "q8_0"]
    result = CliRunner().invoke(main, [*args, "--no-verify", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["files"][0]["file"] == "model-q8_0.gguf" and doc["verified"] is False
    assert 8.4 < doc["files"][0]["bits_per_weight"] < 8.6


def test_qwen2vl_text_tower_converts_with_mrope_sections(tmp_path):
    """Qwen2-VL's decoder (M-RoPE sections, biases) matches torch on text (the tiny model has no
    all-zero embedding row, which llama.cpp's qwen2vl graph would turn into NaN)."""
    from casseat_edge.models import load_model
    from export.gguf.text import text_source, write_text_gguf
    from export.gguf.verify import verify_text

    loaded = load_model("tiny:qwen2vl")
    path = write_text_gguf(text_source(loaded), tmp_path / "model-f32.gguf", "f32")
    meta, _ = fields(path)
    assert meta["general.architecture"] == "qwen2vl"
    assert meta["qwen2vl.rope.dimension_sections"] == [2, 3, 3, 0]
    logits = [r for r in verify_text(loaded, path, "f32", 200) if r["check"] == "logits"][0]
    assert logits["passed"] and logits["top1"] == 1.0, logits


def test_gguf_metadata_names_no_local_path(tmp_path):
    """A model exported from a directory is named by the directory's last component only: a
    shared GGUF must not carry the exporting machine's paths (user names, project layout)."""
    import dataclasses

    from gguf import GGUFReader, GGUFValueType

    from casseat_edge.models import load_model
    from export.gguf.mmproj import write_mmproj
    from export.gguf.text import gguf_model_name, text_source, write_text_gguf

    loaded = load_model("tiny:smolvlm")
    where = tmp_path / "home" / "alice" / "secret-project" / "student"
    loaded.ref = dataclasses.replace(loaded.ref, spec=str(where))
    paths = [
        write_text_gguf(text_source(loaded), tmp_path / "model-f32.gguf", "f32"),
        write_mmproj(loaded, tmp_path / "mmproj-f32.gguf", "f32"),
    ]
    for path in paths:
        fields = GGUFReader(str(path)).fields
        strings = [
            str(f.contents())
            for f in fields.values()
            if f.types and f.types[0] == GGUFValueType.STRING
        ]
        assert not any(str(tmp_path) in s or "alice" in s for s in strings), path
        assert fields["general.name"].contents().startswith("student")
    assert gguf_model_name("tiny:smolvlm") == "tiny:smolvlm"
    assert gguf_model_name("runs/student/") == "student"
