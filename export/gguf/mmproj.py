"""The vision half of a GGUF export: the `mmproj` file libmtmd loads beside the text model.

One declarative entry per source architecture says which HF tensors belong to the vision encoder
and connector, the clip projector type and how to fill the `clip.vision.*` metadata. Tensor names
come from `gguf.TensorNameMap` for `MODEL_ARCH.MMPROJ`. Matrices are stored in the requested type
(f32, f16 or q8_0 via gguf's bit-exact numpy quantizer); norms, biases and the position table
stay f32.

    write_mmproj(loaded, "mmproj-model-f16.gguf", "f16")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from casseat_edge.errors import UnsupportedArchError


class MmprojSpec:
    """Base of the per-architecture mmproj entries; subclasses set the class attributes."""

    architectures: ClassVar[tuple[str, ...]]
    projector: ClassVar[str]  # gguf.VisionProjectorType value
    prefixes: ClassVar[tuple[str, ...]]  # HF state-dict prefixes that go into the mmproj
    keep_f32: ClassVar[tuple[str, ...]] = ("position_embd",)

    @classmethod
    def add_metadata(cls, writer: Any, model: Any, processor: Any) -> None:
        raise NotImplementedError


class Idefics3Mmproj(MmprojSpec):
    """Idefics3 / SmolVLM: SigLIP encoder + pixel-shuffle connector (`idefics3` projector)."""

    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    projector = "idefics3"
    prefixes = ("model.vision_model.", "model.connector.")

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
        if getattr(image_processor, "do_image_splitting", False):
            # libmtmd tiles the image into image_size slices plus a global view, as HF does;
            # without this key it encodes the global view only (HF's do_image_splitting=False)
            longest = (image_processor.size or {}).get("longest_edge", vision.image_size)
            writer.add_vision_preproc_image_size(int(longest))


MMPROJ_SPECS: dict[str, type[MmprojSpec]] = {
    name: spec for spec in (Idefics3Mmproj,) for name in spec.architectures
}


def mmproj_spec(model: Any) -> type[MmprojSpec]:
    architecture = (model.config.architectures or ["?"])[0]
    if architecture not in MMPROJ_SPECS:
        raise UnsupportedArchError(
            f"mmproj export of {architecture!r} is not supported; supported: "
            + ", ".join(sorted(MMPROJ_SPECS))
        )
    return MMPROJ_SPECS[architecture]


def mmproj_tensors(model: Any, spec: type[MmprojSpec]) -> dict[str, np.ndarray]:
    """The encoder + connector tensors under llama.cpp's mmproj names, as float32 arrays."""
    import gguf

    n_blocks = model.config.vision_config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, n_blocks)
    out = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith(spec.prefixes):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UnsupportedArchError(f"vision tensor {name!r} has no llama.cpp mmproj name")
        out[new] = np.ascontiguousarray(tensor.detach().float().cpu().numpy())
    return out


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
    writer.add_name(f"{loaded.ref.spec} mmproj")
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
