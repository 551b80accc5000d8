"""The vision half of a GGUF export: the `mmproj` file libmtmd loads beside the text model.

One entry per libmtmd projector type (`ArchSpec.mmproj_projector` names it for an architecture,
whose `vision_prefixes` + `connector_prefixes` say which HF tensors go in) says how to fill the
`clip.vision.*` metadata and how to rename what the name map lacks. Tensor names
come from `gguf.TensorNameMap` for `MODEL_ARCH.MMPROJ`; an entry's `rename` hook adapts HF names
or layouts the map does not cover (Qwen-VL: fused qkv, Conv3d patch embedding), its `finish`
hook the rest (Idefics3: the position table in the order transformers reads it). Matrices are
stored in the requested type (f32, f16 or q8_0 via gguf's bit-exact numpy quantizer); norms,
biases and the position table stay f32.

    write_mmproj(loaded, "mmproj-model-f16.gguf", "f16")
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from casseat_edge.errors import UnsupportedArchError
from casseat_edge.models import ArchSpec, supported_arch
from export.gguf.text import gguf_model_name


class MmprojSpec:
    """Base of the per-projector mmproj entries; subclasses set the class attributes."""

    projector: ClassVar[str]  # gguf.VisionProjectorType value (= ArchSpec.mmproj_projector)
    keep_f32: ClassVar[tuple[str, ...]] = ("position_embd",)
    # libmtmd lays an image out in the prompt as the HF processor does (same tokens), so logits
    # after an image are comparable; Idefics3: no (see Idefics3Mmproj.parity_image)
    same_prompt_layout: ClassVar[bool] = True

    @classmethod
    def add_metadata(cls, writer: Any, model: Any, processor: Any) -> None:
        raise NotImplementedError

    @classmethod
    def rename(cls, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray, bool]]:
        """(name, array, is_final) pieces of one HF tensor; names not final go through the
        `TensorNameMap`. Default: the HF tensor as it is."""
        yield name, array, False

    @classmethod
    def finish(cls, tensors: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        """Last changes to the named tensors, after renaming. Default: none."""
        return tensors

    @classmethod
    def parity_image(cls, model: Any, processor: Any) -> tuple[int, dict[str, int]]:
        """(side of a square image both HF and libmtmd encode without resizing, libmtmd context
        settings that make its resize policy the processor's)."""
        raise NotImplementedError

    @classmethod
    def reference_embeddings(cls, model: Any, processor: Any, image: Any) -> np.ndarray:
        """PyTorch's [tokens, dim] embeddings of the image libmtmd encodes last."""
        raise NotImplementedError


class Idefics3Mmproj(MmprojSpec):
    """Idefics3 / SmolVLM: SigLIP encoder + pixel-shuffle connector (`idefics3` projector)."""

    projector = "idefics3"
    same_prompt_layout = False

    @classmethod
    def add_metadata(cls, writer: Any, model: Any, processor: Any) -> None:
        vision = model.config.vision_config
        image_processor = processor.image_processor
        writer.add_vision_image_size(vision.image_size)
        writer.add_vision_patch_size(vision.patch_size)
        writer.add_vision_embedding_length(vision.hidden_size)
        writer.add_vision_feed_forward_length(vision.intermediate_size)
        writer.add_vision_block_count(vision.num_hidden_layers)
        writer.add_vision_head_count(vision.num_attention_heads)
        writer.add_vision_attention_layernorm_eps(float(vision.layer_norm_eps))
        writer.add_vision_projection_dim(model.config.get_text_config().hidden_size)
        writer.add_vision_image_mean([float(x) for x in image_processor.image_mean])
        writer.add_vision_image_std([float(x) for x in image_processor.image_std])
        writer.add_vision_projector_scale_factor(int(model.config.scale_factor))
        # SigLIP's MLP uses gelu (tanh approximation); libmtmd reads this flag
        writer.add_vision_use_gelu(vision.hidden_act.startswith("gelu"))
        # libmtmd resizes the longest edge to this, cuts image_size tiles and adds an overview, as
        # HF does with do_image_splitting. Without splitting HF encodes one global image; the
        # nearest libmtmd layout is a longest edge of one tile: a 1x1 grid (one tile + the
        # overview, which equals HF's global image). Without the key libmtmd would instead tile
        # by its own llava-uhd rule (81 tiles for a 640x480 image with the tiny model).
        longest = vision.image_size
        if getattr(image_processor, "do_image_splitting", False):
            longest = (image_processor.size or {}).get("longest_edge", vision.image_size)
        writer.add_vision_preproc_image_size(int(longest))

    @classmethod
    def parity_image(cls, model: Any, processor: Any) -> tuple[int, dict[str, int]]:
        """One tile: libmtmd encodes it as a 1x1 grid tile plus the overview (HF: the global
        image only); the overview is the image HF encodes, at the same pixels."""
        return model.config.vision_config.image_size, {}

    @classmethod
    def reference_embeddings(cls, model: Any, processor: Any, image: Any) -> np.ndarray:
        """The embeddings PyTorch gives the last image the processor makes (the global view)."""
        import torch

        inputs = processor.image_processor(images=[[image]], return_tensors="pt")
        with torch.no_grad():
            out = model.model.get_image_features(
                inputs["pixel_values"], inputs["pixel_attention_mask"]
            )
        return out[-1].float().numpy()

    @classmethod
    def finish(cls, tensors: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        """libmtmd adds position row k to patch k of every (always full-size) tile; transformers
        4.55+ looks rows up through a bucketize whose `* (1 - 1e-6)` sends patch i of a full grid
        to row i - 1 (transformers#41190; older versions, which trained the released SmolVLMs,
        used row i). Store the rows the installed transformers uses, so libmtmd computes what the
        PyTorch model computes; with a transformers that uses row i this changes nothing."""
        table = tensors["v.position_embd.weight"]
        tensors["v.position_embd.weight"] = np.ascontiguousarray(
            table[full_grid_position_ids(model)]
        )
        return tensors


def full_grid_position_ids(model: Any) -> np.ndarray:
    """The position-embedding row the installed transformers uses for each patch of a full-size
    Idefics3 tile, read off its own embedding module."""
    import torch

    embeddings = model.model.vision_model.embeddings
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    seen: list[torch.Tensor] = []
    hook = embeddings.position_embedding.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            pixels = torch.zeros(1, vision.num_channels, vision.image_size, vision.image_size)
            embeddings(pixel_values=pixels, patch_attention_mask=torch.ones(1, side, side).bool())
    finally:
        hook.remove()
    return seen[0][0].cpu().numpy()


class _QwenVLMmproj(MmprojSpec):
    """Qwen2-VL / Qwen2.5-VL: ViT with 2-D M-RoPE + 2x2 patch merger (`visual.*` tensors).

    libmtmd's graph takes q/k/v separately and the Conv3d patch embedding (temporal patch 2) as two
    conv2d kernels, one per frame: a still image is its own frame twice (HF repeats it), so the
    3-D convolution equals the sum of the two 2-D ones, which is what libmtmd computes."""

    keep_f32 = ()

    @classmethod
    def rename(cls, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray, bool]]:
        name = name.removeprefix("model.")  # gguf's map knows `visual.*`
        if name == "visual.patch_embed.proj.weight":
            if array.ndim != 5 or array.shape[2] != 2:
                raise UnsupportedArchError(
                    f"patch embedding {tuple(array.shape)}: libmtmd needs temporal_patch_size 2"
                )
            yield "v.patch_embd.weight", array[:, :, 0], True
            yield "v.patch_embd.weight.1", array[:, :, 1], True
        elif ".attn.qkv." in name:
            for part, piece in zip("qkv", np.split(array, 3, axis=0), strict=True):
                yield name.replace(".qkv.", f".{part}."), piece, False
        else:
            yield name, array, False

    @classmethod
    def add_metadata(cls, writer: Any, model: Any, processor: Any) -> None:
        vision = model.config.vision_config
        image_processor = processor.image_processor
        patch, merge = vision.patch_size, vision.spatial_merge_size
        if vision.temporal_patch_size != 2 or merge != 2:
            raise UnsupportedArchError(
                f"Qwen-VL vision with temporal_patch_size={vision.temporal_patch_size}, "
                f"spatial_merge_size={merge}: libmtmd supports 2 and 2"
            )
        max_pixels = _pixels(image_processor, "max")
        side = patch * merge
        # the largest square the processor keeps unscaled; libmtmd only uses it for its warmup
        writer.add_vision_image_size(max(side, int(max_pixels**0.5) // side * side))
        writer.add_vision_patch_size(patch)
        writer.add_vision_embedding_length(cls.width(vision))
        writer.add_vision_feed_forward_length(cls.ffn_width(vision))
        writer.add_vision_block_count(vision.depth)
        writer.add_vision_head_count(vision.num_heads)
        writer.add_vision_attention_layernorm_eps(1e-6)  # HF hard-codes it for both norms
        writer.add_vision_projection_dim(model.config.get_text_config().hidden_size)
        writer.add_vision_image_mean([float(x) for x in image_processor.image_mean])
        writer.add_vision_image_std([float(x) for x in image_processor.image_std])
        writer.add_vision_spatial_merge_size(merge)
        # not read by libmtmd for Qwen (it takes image_min/max_tokens at context creation), but
        # our runtime passes them on so libmtmd resizes images as the HF processor does
        writer.add_vision_min_pixels(_pixels(image_processor, "min"))
        writer.add_vision_max_pixels(max_pixels)
        cls.add_activation(writer, vision)

    @classmethod
    def parity_image(cls, model: Any, processor: Any) -> tuple[int, dict[str, int]]:
        """The largest square the processor keeps (for the tiny models 8x8 patches, 4x4
        tokens); libmtmd gets the processor's token limits instead of its own (8..4096)."""
        image_processor = processor.image_processor
        step = model.config.vision_config.patch_size * 2  # pixels per merged token side
        lo, hi = _pixels(image_processor, "min"), _pixels(image_processor, "max")
        tokens = {"image_min_tokens": -(-lo // step**2), "image_max_tokens": hi // step**2}
        return int(hi**0.5) // step * step, tokens

    @classmethod
    def reference_embeddings(cls, model: Any, processor: Any, image: Any) -> np.ndarray:
        import torch

        inputs = processor.image_processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        return torch.cat(list(out)).float().numpy()

    @classmethod
    def width(cls, vision: Any) -> int:
        raise NotImplementedError

    @classmethod
    def ffn_width(cls, vision: Any) -> int:
        raise NotImplementedError

    @classmethod
    def add_activation(cls, writer: Any, vision: Any) -> None:
        raise NotImplementedError


class Qwen2VLMmproj(_QwenVLMmproj):
    """Qwen2-VL: LayerNorm blocks, quick-GELU MLP (`qwen2vl_merger`)."""

    projector = "qwen2vl_merger"

    @classmethod
    def width(cls, vision: Any) -> int:
        return vision.embed_dim  # Qwen2-VL's vision `hidden_size` is the merger's output width

    @classmethod
    def ffn_width(cls, vision: Any) -> int:
        return int(vision.embed_dim * vision.mlp_ratio)

    @classmethod
    def add_activation(cls, writer: Any, vision: Any) -> None:
        if vision.hidden_act != "quick_gelu":  # libmtmd's default when no use_* flag is set
            raise UnsupportedArchError(
                f"Qwen2-VL vision hidden_act={vision.hidden_act!r}: libmtmd supports quick_gelu"
            )


class Qwen25VLMmproj(_QwenVLMmproj):
    """Qwen2.5-VL: RMSNorm blocks, SiLU-gated MLP and window attention with full-attention blocks
    every `n_wa_pattern` layers (`qwen2.5vl_merger`)."""

    projector = "qwen2.5vl_merger"
    window = 112  # libmtmd's fixed attention window (pixels) for this projector

    @classmethod
    def width(cls, vision: Any) -> int:
        return vision.hidden_size

    @classmethod
    def ffn_width(cls, vision: Any) -> int:
        return vision.intermediate_size

    @classmethod
    def add_activation(cls, writer: Any, vision: Any) -> None:
        if vision.hidden_act != "silu":
            raise UnsupportedArchError(
                f"Qwen2.5-VL vision hidden_act={vision.hidden_act!r}: libmtmd supports silu"
            )
        if vision.window_size != cls.window:
            raise UnsupportedArchError(
                f"Qwen2.5-VL vision window_size={vision.window_size}: libmtmd's "
                f"qwen2.5vl_merger uses a fixed {cls.window}-pixel window"
            )
        writer.add_vision_use_silu(True)
        writer.add_vision_n_wa_pattern(wa_pattern(list(vision.fullatt_block_indexes)))


def wa_pattern(full: list[int]) -> int:
    """libmtmd runs full attention in blocks where (i + 1) % n == 0: HF's fullatt_block_indexes
    must be n - 1, 2n - 1, ... for one n."""
    n = full[0] + 1 if full else 0
    if not full or full != list(range(n - 1, n * len(full), n)):
        raise UnsupportedArchError(
            f"fullatt_block_indexes={full}: libmtmd needs every n-th block (n-1, 2n-1, ...)"
        )
    return n


def _pixels(image_processor: Any, which: str) -> int:
    size = getattr(image_processor, "size", None) or {}
    key = "shortest_edge" if which == "min" else "longest_edge"
    value = size.get(key) or getattr(image_processor, f"{which}_pixels", None)
    if not value:
        raise UnsupportedArchError(f"Qwen-VL image processor has no {which}_pixels")
    return int(value)


MMPROJ_PROJECTORS: dict[str, type[MmprojSpec]] = {
    spec.projector: spec for spec in (Idefics3Mmproj, Qwen2VLMmproj, Qwen25VLMmproj)
}


def has_mmproj(arch: type[ArchSpec]) -> bool:
    """Whether an mmproj can be written for the entry: its projector type has a writer here."""
    return arch.mmproj_projector in MMPROJ_PROJECTORS


def mmproj_arch(model: Any) -> type[ArchSpec]:
    """The architecture entry of a loaded VLM, if its mmproj can be written."""
    architecture = (model.config.architectures or ["?"])[0]
    return supported_arch(architecture, "mmproj export", has_mmproj)


def mmproj_spec(model: Any) -> type[MmprojSpec]:
    return MMPROJ_PROJECTORS[mmproj_arch(model).mmproj_projector]


def mmproj_tensors(model: Any, spec: type[MmprojSpec]) -> dict[str, np.ndarray]:
    """The encoder + connector tensors under llama.cpp's mmproj names, as float32 arrays."""
    import gguf

    arch = mmproj_arch(model)
    prefixes = tuple(p + "." for p in (*arch.vision_prefixes, *arch.connector_prefixes))
    vision = model.config.vision_config
    n_blocks = getattr(vision, "num_hidden_layers", None) or vision.depth  # Qwen-VL: depth
    # the map numbers projector layers like blocks (Qwen's `merger.mlp.2` -> `mm.2`): leave room
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(n_blocks, 4))
    out = {}
    for hf_name, tensor in model.state_dict().items():
        if not hf_name.startswith(prefixes):
            continue
        array = tensor.detach().float().cpu().numpy()
        for name, piece, final in spec.rename(hf_name, array):
            new = name if final else names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UnsupportedArchError(f"vision tensor {hf_name!r} has no llama.cpp name")
            out[new] = np.ascontiguousarray(piece)
    return spec.finish(out, model)


def _stored(name: str, array: np.ndarray, dtype: str, spec: type[MmprojSpec]) -> tuple:
    """(array, raw dtype) as written: 1-D tensors and `keep_f32` ones stay f32."""
    import gguf

    if dtype == "f32" or array.ndim < 2 or any(k in name for k in spec.keep_f32):
        return array, None
    if dtype == "q8_0" and array.ndim == 2 and array.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array, qtype), qtype
    return array.astype(np.float16), None  # f16, and q8_0's fallback for odd shapes


def write_mmproj(loaded: Any, path: str | Path, dtype: str) -> Path:
    """Write the mmproj GGUF of a loaded VLM (`casseat_edge.models.LoadedModel`)."""
    import gguf

    model = loaded.model
    spec = mmproj_spec(model)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(f"{gguf_model_name(loaded.ref.spec)} mmproj")
    writer.add_file_type(file_type.get(dtype, gguf.LlamaFileType.MOSTLY_Q8_0))
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(spec.projector)
    spec.add_metadata(writer, model, loaded.processor)
    for name, array in mmproj_tensors(model, spec).items():
        data, raw = _stored(name, array, dtype, spec)
        if raw is None:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
