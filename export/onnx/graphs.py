"""The three graphs of the split layout, traced from the transformers model with torch.onnx
(TorchScript exporter, `dynamo=False`), and the per-family table that says where each part lives.

- decoder: the text model + lm_head behind flat past tensors. transformers 4.57 keeps the KV cache
  in `DynamicCache` objects, so the wrapper builds one from `past_key_values.N.key/value` and
  returns its layers as `present.N.*`. The causal + padding mask is built here as a 4D additive
  mask (transformers passes a 4D mask straight through), so no mask-building code is traced.
  Attention runs in eager mode for export: one plain softmax(QK^T + mask)V graph.
- embed_tokens: the input embedding table.
- vision_encoder: Idefics3's SigLIP tower + connector for whole frames (the position ids
  transformers' bucketing gives a full frame, computed once at export); Qwen2-VL's ViT with its attention restated
  over an explicit block-diagonal bias and rotary ids given as inputs (transformers splits the
  sequence with `.tolist()` and builds the ids in Python, which a trace would freeze).

    family = family_for(loaded)
    export_decoder(loaded.model, family, "onnx/decoder_model_merged.onnx", opset=17)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from casseat_edge.errors import UnsupportedArchError


@dataclasses.dataclass(frozen=True)
class OnnxFamily:
    """Where the parts of one architecture live, and how its decoder takes positions."""

    architecture: str
    text_model: Callable[[Any], nn.Module]
    lm_head: Callable[[Any], nn.Module]
    position_rows: int = 1  # 3: Qwen2-VL's M-RoPE (temporal, height, width)
    vision: Callable[[Any], nn.Module] | None = None  # wrapper builder for the vision encoder
    vision_inputs: tuple[str, ...] = ()


class Idefics3Vision(nn.Module):
    """Whole frames [n, 3, H, W] -> connector output [n, image_seq_len, text hidden]."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.tower, self.connector = model.model.vision_model, model.model.connector
        self.register_buffer("position_ids", full_frame_position_ids(self.tower.embeddings))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.tower.embeddings
        patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        positions = emb.position_embedding(self.position_ids)[None]
        hidden = self.tower.encoder(inputs_embeds=patches + positions)
        hidden = self.tower.post_layernorm(hidden.last_hidden_state)
        return self.connector(hidden)


def full_frame_position_ids(embeddings: Any) -> torch.Tensor:
    """The position ids transformers' Idefics3 embeddings give a whole frame: its fractional
    bucketing, restated for a full patch grid (it maps patch 1 of a row to bucket 0 too)."""
    n = embeddings.num_patches_per_side
    boundaries = torch.arange(1 / n, 1.0, 1 / n)
    fractions = torch.arange(n, dtype=torch.float32) / n * (1 - 1e-6)
    buckets = torch.bucketize(fractions, boundaries, right=True)
    return (buckets[:, None] * n + buckets).flatten()


class Qwen2VLVision(nn.Module):
    """Patches [N, C*T*P*P] + rotary (row, col) ids [N, 2] + attention bias [N, N] -> merged
    image features [N / merge^2, text hidden]; the same arithmetic as transformers' ViT."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.visual = model.model.visual

    def forward(
        self, pixel_values: torch.Tensor, vision_pos_ids: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        visual = self.visual
        hidden = visual.patch_embed(pixel_values)
        freqs = (vision_pos_ids.float()[..., None] * visual.rotary_pos_emb.inv_freq).flatten(1)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        for blk in visual.blocks:
            attn, x = blk.attn, blk.norm1(hidden)
            qkv = attn.qkv(x).reshape(x.shape[0], 3, attn.num_heads, -1)
            q, k, v = qkv.permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [heads, N, head_dim]
            scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling + bias
            out = torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32), v)
            hidden = hidden + attn.proj(out.transpose(0, 1).reshape(x.shape[0], -1))
            hidden = hidden + blk.mlp(blk.norm2(hidden))
        return visual.merger(hidden)


def _text_only(name: str) -> OnnxFamily:
    return OnnxFamily(name, lambda m: m.model, lambda m: m.lm_head)


FAMILIES = {
    f.architecture: f
    for f in (
        _text_only("LlamaForCausalLM"),
        _text_only("Qwen2ForCausalLM"),
        OnnxFamily(
            "Idefics3ForConditionalGeneration",
            lambda m: m.model.text_model,
            lambda m: m.lm_head,
            vision=Idefics3Vision,
            vision_inputs=("pixel_values",),
        ),
        OnnxFamily(
            "Qwen2VLForConditionalGeneration",
            lambda m: m.model.language_model,
            lambda m: m.lm_head,
            position_rows=3,
            vision=Qwen2VLVision,
            vision_inputs=("pixel_values", "vision_pos_ids", "vision_attention_bias"),
        ),
    )
}


def family_for(architecture: str | None) -> OnnxFamily:
    if architecture not in FAMILIES:
        raise UnsupportedArchError(
            f"ONNX export of {architecture!r} is not supported; supported: "
            + ", ".join(sorted(FAMILIES))
        )
    return FAMILIES[architecture]


class Decoder(nn.Module):
    """inputs_embeds, attention_mask, position_ids, flat past -> logits, flat present."""

    def __init__(self, model: Any, family: OnnxFamily) -> None:
        super().__init__()
        self.text, self.head = family.text_model(model), family.lm_head(model)
        self.layers = self.text.config.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):  # noqa: ANN001
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs)
        out = self.text(
            inputs_embeds=inputs_embeds,
            attention_mask=additive_mask(attention_mask, inputs_embeds),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (self.head(out.last_hidden_state), *present)


def additive_mask(attention_mask: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """[batch, total] 0/1 -> [batch, 1, seq, total] additive causal + padding mask."""
    seq, total = embeds.shape[1], attention_mask.shape[1]
    keys = torch.arange(total, device=embeds.device)
    queries = torch.arange(seq, device=embeds.device) + (total - seq)
    allowed = (keys[None, :] <= queries[:, None])[None, None] & attention_mask.bool()[:, None, None]
    low = torch.tensor(torch.finfo(embeds.dtype).min, dtype=embeds.dtype)
    return torch.where(allowed, torch.zeros((), dtype=embeds.dtype), low)


def decoder_names(layers: int) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    axes: dict[str, dict[int, str]] = {
        "inputs_embeds": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in past})
    axes.update({name: {0: "batch", 2: "total_sequence"} for name in present})
    return ["inputs_embeds", "attention_mask", "position_ids", *past], ["logits", *present], axes


def export_decoder(model: Any, family: OnnxFamily, path: Path, opset: int) -> dict[str, Any]:
    """Trace with a 3-token past and 2 new tokens (both axes dynamic); returns the shape info."""
    wrapper = Decoder(model, family).eval()
    config = wrapper.text.config
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    past = [torch.randn(1, kv_heads, 3, head_dim) for _ in range(2 * wrapper.layers)]
    embeds = torch.randn(1, 2, config.hidden_size)
    positions = torch.tensor([[3, 4]])
    if family.position_rows == 3:
        positions = positions[None].expand(3, 1, 2).contiguous()
    inputs, outputs, axes = decoder_names(wrapper.layers)
    lead = 0 if family.position_rows == 1 else 1  # M-RoPE ids are [3, batch, sequence]
    axes["position_ids"] = {lead: "batch", lead + 1: "sequence"}
    _export(wrapper, (embeds, torch.ones(1, 5, dtype=torch.long), positions, *past), path,
            inputs, outputs, axes, opset)  # fmt: skip
    return {
        "num_layers": wrapper.layers,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "position_rows": family.position_rows,
    }


def export_embed(model: Any, path: Path, opset: int) -> None:
    embed = model.get_input_embeddings().eval()
    ids = torch.tensor([[1, 2, 3]])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "inputs_embeds": {0: "batch", 1: "sequence"}}
    _export(embed, (ids,), path, ["input_ids"], ["inputs_embeds"], axes, opset)


def export_vision(model: Any, family: OnnxFamily, path: Path, opset: int) -> None:
    assert family.vision is not None
    wrapper = family.vision(model).eval()
    vision = model.config.vision_config
    if family.position_rows == 3:
        grid = torch.tensor([[1, 2, 4]])  # not the verified image's grid: shapes stay dynamic
        size = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        n = int(grid.prod())
        from casseat_edge.onnx_split import qwen2vl_vision_inputs

        extra = qwen2vl_vision_inputs(grid.numpy(), vision.spatial_merge_size)
        args = (torch.randn(n, size), *(torch.from_numpy(v) for v in extra.values()))
        axes = {
            "pixel_values": {0: "patches"},
            "vision_pos_ids": {0: "patches"},
            "vision_attention_bias": {0: "patches", 1: "patches"},
            "image_features": {0: "image_tokens"},
        }
    else:
        args = (torch.randn(2, 3, vision.image_size, vision.image_size),)
        axes = {"pixel_values": {0: "images"}, "image_features": {0: "images"}}
    _export(wrapper, args, path, list(family.vision_inputs), ["image_features"], axes, opset)


def _export(module, args, path, inputs, outputs, axes, opset) -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values in shapes
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
