"""GGUF export of the vision models: Qwen2-VL / Qwen2.5-VL mmproj (`qwen2vl_merger`,
`qwen2.5vl_merger`), image-embedding parity of every mmproj against PyTorch, the metadata libmtmd
reads (re-read with `gguf.GGUFReader`), and the errors for unusable source directories.

Exports of tiny models take ~10-25 s each (llama.cpp evaluating a 49k-vocab model with all logits).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from casseat_edge.errors import ModelSpecError, UnsupportedArchError
from tests.conftest import has_module
from tests.test_export_gguf import check_text_gguf, export, fields, rows, tensor_shapes

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)


@pytest.mark.parametrize(
    ("model", "projector", "quant", "mmproj_quant"),
    [
        ("tiny:qwen2vl", "qwen2vl_merger", "f16", "f16"),
        ("tiny:qwen2vl", "qwen2vl_merger", "q8_0", "q8_0"),
        ("tiny:qwen2vl", "qwen2vl_merger", "q4_k_m", "f16"),
        ("tiny:qwen2.5vl", "qwen2.5vl_merger", "f16", "f32"),
    ],
)
def test_qwen_vl_export_verifies_and_reads_back(tmp_path, model, projector, quant, mmproj_quant):
    from casseat_edge.models import load_model

    summary, out = export(tmp_path, model, quant, mmproj_quant=mmproj_quant)
    assert summary["passed"] is True, summary["parity"]
    loaded = load_model(model)
    check_text_gguf(out / f"model-{quant}.gguf", "qwen2vl", loaded)
    meta, _ = fields(out / f"model-{quant}.gguf")
    assert meta["qwen2vl.rope.dimension_sections"] == [2, 3, 3, 0]
    mmproj = out / f"mmproj-{mmproj_quant}.gguf"
    meta, names = fields(mmproj)
    vision = loaded.model.config.vision_config
    assert meta["general.architecture"] == "clip" and meta["clip.projector_type"] == projector
    assert meta["clip.vision.block_count"] == vision.depth == 2
    assert meta["clip.vision.projection_dim"] == 64 and meta["clip.vision.spatial_merge_size"] == 2
    assert meta["clip.vision.image_max_pixels"] == 112 * 112
    shapes = tensor_shapes(mmproj)
    # the Conv3d (64, 3, 2, 14, 14) as two conv2d kernels; fused qkv as q, k, v
    assert shapes["v.patch_embd.weight"] == shapes["v.patch_embd.weight.1"] == (64, 3, 14, 14)
    assert shapes["v.blk.1.attn_q.weight"] == (64, 64) and "v.blk.1.attn_qkv.weight" not in names
    assert shapes["mm.0.weight"] == (256, 256) and shapes["mm.2.weight"] == (64, 256)
    assert "v.post_ln.weight" in names  # the merger's ln_q
    if projector == "qwen2.5vl_merger":
        assert meta["clip.use_silu"] is True and meta["clip.vision.n_wa_pattern"] == 2
        assert "v.blk.0.ffn_gate.weight" in names and "v.post_ln.bias" not in names  # RMSNorm
    else:
        assert "clip.use_silu" not in meta and "v.blk.0.ffn_gate.weight" not in names
    embeddings = rows(summary, "image_embeddings")[0]
    assert embeddings["mtmd_image_tokens"] == embeddings["torch_tokens_compared"] == 16
    assert embeddings["rel_max_abs"] <= embeddings["bounds"]["rel_max_abs"]
    assert rows(summary, "vision")[0]["logit_change"] > 1e-3


def test_qwen2vl_patch_embedding_split_is_the_conv3d():
    """Conv3d over a frame repeated twice == the sum of the two conv2d kernels libmtmd runs."""
    import torch

    from casseat_edge.models import load_model
    from export.gguf.mmproj import Qwen2VLMmproj, mmproj_tensors

    model = load_model("tiny:qwen2vl").model
    tensors = mmproj_tensors(model, Qwen2VLMmproj)
    frame = torch.randn(1, 3, 14, 14)
    conv3d = model.model.visual.patch_embed.proj
    with torch.no_grad():
        want = conv3d(torch.stack([frame, frame], 2)).flatten()
        kernels = [
            torch.from_numpy(tensors[n]) for n in ("v.patch_embd.weight", "v.patch_embd.weight.1")
        ]
        got = sum(torch.nn.functional.conv2d(frame, k) for k in kernels).flatten()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_idefics3_image_embeddings_match_torch(tmp_path):
    """libmtmd's overview embeddings equal PyTorch's global image (the position table is stored in
    the order the installed transformers looks it up: transformers#41190)."""
    from casseat_edge.models import load_model
    from export.gguf.mmproj import full_grid_position_ids, write_mmproj
    from export.gguf.text import text_source, write_text_gguf
    from export.gguf.verify import verify_image_embeddings

    loaded = load_model("tiny:smolvlm")
    text = write_text_gguf(text_source(loaded), tmp_path / "model-f32.gguf", "f32")
    proj = write_mmproj(loaded, tmp_path / "mmproj-f32.gguf", "f32")
    row = verify_image_embeddings(loaded, text, proj, "f32")
    assert row["passed"] and row["rel_max_abs"] < 2e-3, row
    # libmtmd lays the one-tile image out as a 1x1 grid tile + overview; HF encodes the global only
    assert row["mtmd_images"] == 2 and row["mtmd_image_tokens"] == 2 * row["torch_tokens_compared"]
    ids = full_grid_position_ids(loaded.model)
    assert ids.shape == (16,) and ids.max() <= 15


def test_image_embedding_check_fails_on_a_wrong_position_table(tmp_path, monkeypatch):
    """The identity position order (what libmtmd assumes) is not what this transformers computes:
    the image-embedding row must see the difference (0.088 abs here before the fix)."""
    from casseat_edge.models import load_model
    from export.gguf import mmproj
    from export.gguf.text import text_source, write_text_gguf
    from export.gguf.verify import verify_image_embeddings

    loaded = load_model("tiny:smolvlm")
    ids = mmproj.full_grid_position_ids(loaded.model)
    if np.array_equal(ids, np.arange(len(ids))):
        pytest.skip("this transformers uses the identity position order (transformers#41190 fixed)")
    monkeypatch.setattr(mmproj, "full_grid_position_ids", lambda model: np.arange(len(ids)))
    text = write_text_gguf(text_source(loaded), tmp_path / "model-f32.gguf", "f32")
    proj = mmproj.write_mmproj(loaded, tmp_path / "mmproj-f32.gguf", "f32")
    row = verify_image_embeddings(loaded, text, proj, "f32")
    assert row["passed"] is False and row["rel_max_abs"] > 1e-2, row


def test_wa_pattern_accepts_only_regular_full_attention_blocks():
    from export.gguf.mmproj import wa_pattern

    assert wa_pattern([7, 15, 23, 31]) == 8 and wa_pattern([1]) == 2
    with pytest.raises(UnsupportedArchError, match="every n-th block"):
        wa_pattern([3, 10])


def _copy_tiny(name: str, dst: Path) -> Path:
    from casseat_edge.models import resolve_model

    shutil.copytree(resolve_model(f"tiny:{name}").path, dst)
    return dst


def test_hf_dir_without_tokenizer_or_processor_is_refused(tmp_path):
    source = _copy_tiny("qwen2vl", tmp_path / "src")
    (source / "preprocessor_config.json").unlink()
    with pytest.raises(ModelSpecError, match="missing preprocessor_config.json"):
        export(tmp_path, str(source))
    (source / "tokenizer.json").unlink()
    with pytest.raises(ModelSpecError, match="missing tokenizer.json, preprocessor_config"):
        export(tmp_path, str(source))
    assert not list(tmp_path.glob("*-f16"))  # refused before writing anything


def test_unmerged_lora_adapter_dir_is_refused(tmp_path):
    from click.testing import CliRunner

    from casseat_cli.cli import main

    source = _copy_tiny("llama", tmp_path / "src")
    (source / "model.safetensors").rename(source / "adapter_model.safetensors")
    (source / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    result = CliRunner().invoke(
        main, ["export", "--model", str(source), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "without merged weights; merge it first" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_image_logits_see_wrong_text_positions_after_an_image(tmp_path, monkeypatch):
    """Text after a Qwen2-VL image sits at position start + max(grid h, w) (M-RoPE); advancing by
    the image's token count instead (plain rope) must fail the image_logits row."""
    from casseat_edge.formats.mtmd import LlamaSession
    from casseat_edge.models import load_model
    from export.gguf.mmproj import write_mmproj
    from export.gguf.text import text_source, write_text_gguf
    from export.gguf.verify import verify_image_logits

    loaded = load_model("tiny:qwen2vl")
    text = write_text_gguf(text_source(loaded), tmp_path / "model-f32.gguf", "f32")
    proj = write_mmproj(loaded, tmp_path / "mmproj-f32.gguf", "f32")
    assert verify_image_logits(loaded, text, proj, "f32")["passed"]

    def token_count_positions(self, index, images=None):  # every slot one position
        return index

    monkeypatch.setattr(LlamaSession, "position", token_count_positions)
    row = verify_image_logits(loaded, text, proj, "f32")
    assert row["passed"] is False and "rel max abs" in row["failures"][0], row
