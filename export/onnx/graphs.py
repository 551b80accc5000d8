"""The graphs of the transformers.js layout, traced from the transformers model with torch.onnx
(TorchScript exporter, `dynamo=False`); where each part lives comes from the `ArchSpec` entry
(`text_prefix`, `lm_head`, `mrope`, and `onnx_vision` naming one of the vision graphs here).

- decoder: the text model + lm_head behind flat past tensors; for text-only models the embedding
  lookup is traced in too (the merged `model.onnx`, input_ids in), for VLMs it takes
  inputs_embeds (`decoder_model_merged.onnx`). transformers 4.57 keeps the KV cache in
  `DynamicCache` objects, so the wrapper builds one from `past_key_values.N.key/value` and
  returns its layers as `present.N.*`. The causal + padding mask is built here as a 4D additive
  mask (transformers passes a 4D mask straight through), so no mask-building code is traced.
  Attention runs in eager mode for export: one plain softmax(QK^T + mask)V graph.
- embed_tokens (VLMs): the input embedding table.
- vision_encoder: Idefics3's SigLIP tower + connector on the processor's [batch, images, 3, H, W]
  pixels and pixel mask (padding images dropped, patch mask and bucketed position ids computed
  in the graph, as transformers does in Python); Qwen2-VL's ViT with its attention restated
  over an explicit block-diagonal bias and rotary ids given as inputs (transformers splits the
  sequence with `.tolist()` and builds the ids in Python, which a trace would freeze).

    family = family_for("Idefics3ForConditionalGeneration")
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

from casseat_edge.models import ArchSpec, arch_names, supported_arch


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
    """pixel_values [batch, images, 3, H, W] + pixel_attention_mask [batch, images, H, W] ->
    connector output [real images, image_seq_len, text hidden], as transformers'
    `get_image_features` computes it: all-zero (padding) images are dropped, the pixel mask
    becomes a patch mask that masks attention keys and picks each patch's bucketed position id."""

    input_names = ("pixel_values", "pixel_attention_mask")

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.tower, self.connector = model.model.vision_model, model.model.connector
        emb = self.tower.embeddings
        self.patch, self.side = emb.patch_size, emb.num_patches_per_side
        side = self.side
        self.register_buffer("boundaries", torch.arange(1 / side, 1.0, 1 / side))

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor):  # noqa: ANN201
        frames = pixel_values.flatten(0, 1)
        real = (frames != 0).flatten(1).sum(1) > 0
        real = real | ((torch.arange(real.shape[0]) == 0) & (real.sum() == 0))  # keep one
        frames, mask = frames[real], pixel_attention_mask.flatten(0, 1)[real]
        n, _, height, width = frames.shape
        rows, cols = height // self.patch, width // self.patch
        patches = mask.reshape(n, rows, self.patch, cols, self.patch).sum((2, 4)) > 0
        emb = self.tower.embeddings
        hidden = emb.patch_embedding(frames).flatten(2).transpose(1, 2)
        hidden = hidden + emb.position_embedding(self._position_ids(patches))
        keys = patches.flatten(1)[:, None, None, :]
        low = torch.tensor(torch.finfo(hidden.dtype).min, dtype=hidden.dtype)
        bias = torch.where(keys, torch.zeros((), dtype=hidden.dtype), low)
        hidden = self.tower.encoder(inputs_embeds=hidden, attention_mask=bias)
        return self.connector(self.tower.post_layernorm(hidden.last_hidden_state))

    def _position_ids(self, patches: torch.Tensor) -> torch.Tensor:
        """transformers' fractional bucketing, restated with tensors: the real patches of a
        frame (a top-left rectangle) spread over the full position grid; padding patches 0."""
        n_rows = patches[:, :, 0].sum(1).float()[:, None]
        n_cols = patches[:, 0, :].sum(1).float()[:, None]
        rows = torch.arange(patches.shape[1], dtype=torch.float32)[None] / n_rows * (1 - 1e-6)
        cols = torch.arange(patches.shape[2], dtype=torch.float32)[None] / n_cols * (1 - 1e-6)
        bucket_rows = (self.boundaries <= rows[..., None]).sum(-1)  # bucketize(right=True)
        bucket_cols = (self.boundaries <= cols[..., None]).sum(-1)
        ids = bucket_rows[:, :, None] * self.side + bucket_cols[:, None, :]
        return torch.where(patches, ids, torch.zeros_like(ids)).flatten(1)


class Qwen2VLVision(nn.Module):
    """Patches [N, C*T*P*P] + rotary (row, col) ids [N, 2] + attention bias [N, N] -> merged
    image features [N / merge^2, text hidden]; the same arithmetic as transformers' ViT."""

    input_names = ("pixel_values", "vision_pos_ids", "vision_attention_bias")

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


# the vision-encoder graphs, by the name `ArchSpec.onnx_vision` gives
VISION_GRAPHS: dict[str, type[nn.Module]] = {"idefics3": Idefics3Vision, "qwen2vl": Qwen2VLVision}


def has_onnx(arch: type[ArchSpec]) -> bool:
    """Text-only models always; vision models when their vision graph exists here."""
    return not arch.vision or arch.onnx_vision in VISION_GRAPHS


def onnx_architectures() -> list[str]:
    return arch_names(has_onnx)


def family_for(architecture: str | None) -> OnnxFamily:
    arch = supported_arch(architecture, "ONNX export", has_onnx)
    vision = VISION_GRAPHS[arch.onnx_vision] if arch.vision else None
    return OnnxFamily(
        arch.architecture,
        lambda m: m.get_submodule(arch.text_prefix),
        lambda m: m.get_submodule(arch.lm_head),
        position_rows=3 if arch.mrope else 1,
        vision=vision,
        vision_inputs=vision.input_names if vision else (),
    )


class Decoder(nn.Module):
    """inputs_embeds (or input_ids, with `with_embeddings`), attention_mask, position_ids, flat
    past -> logits, flat present."""

    def __init__(self, model: Any, family: OnnxFamily, with_embeddings: bool = False) -> None:
        super().__init__()
        self.text, self.head = family.text_model(model), family.lm_head(model)
        self.embed = model.get_input_embeddings() if with_embeddings else None
        self.layers = self.text.config.num_hidden_layers

    def forward(self, tokens, attention_mask, position_ids, *past):  # noqa: ANN001
        from transformers import DynamicCache

        inputs_embeds = tokens if self.embed is None else self.embed(tokens)
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


def decoder_names(
    layers: int, tokens: str = "inputs_embeds"
) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    axes: dict[str, dict[int, str]] = {
        tokens: {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in past})
    axes.update({name: {0: "batch", 2: "total_sequence"} for name in present})
    return [tokens, "attention_mask", "position_ids", *past], ["logits", *present], axes


def export_decoder(
    model: Any, family: OnnxFamily, path: Path, opset: int, with_embeddings: bool = False
) -> dict[str, Any]:
    """Trace with a 3-token past and 2 new tokens (both axes dynamic); returns the shape info.
    `with_embeddings`: the merged text graph (input_ids in) transformers.js loads as `model`."""
    wrapper = Decoder(model, family, with_embeddings).eval()
    config = wrapper.text.config
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    past = [torch.randn(1, kv_heads, 3, head_dim) for _ in range(2 * wrapper.layers)]
    tokens = torch.tensor([[1, 2]]) if with_embeddings else torch.randn(1, 2, config.hidden_size)
    positions = torch.tensor([[3, 4]])
    if family.position_rows == 3:
        positions = positions[None].expand(3, 1, 2).contiguous()
    inputs, outputs, axes = decoder_names(
        wrapper.layers, "input_ids" if with_embeddings else "inputs_embeds"
    )
    lead = 0 if family.position_rows == 1 else 1  # M-RoPE ids are [3, batch, sequence]
    axes["position_ids"] = {lead: "batch", lead + 1: "sequence"}
    _export(wrapper, (tokens, torch.ones(1, 5, dtype=torch.long), positions, *past), path,
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
        from casseat_edge.formats.onnx_split import qwen2vl_vision_inputs

        extra = qwen2vl_vision_inputs(grid.numpy(), vision.spatial_merge_size)
        args = (torch.randn(n, size), *(torch.from_numpy(v) for v in extra.values()))
        axes = {
            "pixel_values": {0: "patches"},
            "vision_pos_ids": {0: "patches"},
            "vision_attention_bias": {0: "patches", 1: "patches"},
            "image_features": {0: "image_tokens"},
        }
    else:  # frames stay image_size square (the connector's pixel shuffle is traced for them)
        size = vision.image_size
        args = (torch.randn(1, 2, 3, size, size), torch.ones(1, 2, size, size, dtype=torch.bool))
        images = {0: "batch", 1: "num_images"}
        axes = {"pixel_values": images, "pixel_attention_mask": images,
                "image_features": {0: "real_images"}}  # fmt: skip
    _export(wrapper, args, path, list(family.vision_inputs), ["image_features"], axes, opset)


def _export(module, args, path, inputs, outputs, axes, opset) -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values in shapes
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
