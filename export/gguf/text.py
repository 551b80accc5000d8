"""The text half of a GGUF export: the decoder and its byte-level BPE tokenizer.

Takes the decoder of a loaded HF model (a plain Llama or Qwen2, or the text tower of an
Idefics3, Qwen2-VL or Qwen2.5-VL VLM; where it lives and its llama.cpp architecture come from
the `ArchSpec` entry: `text_prefix`, `gguf_arch`, `gguf_permute_qk`, `mrope`), renames its
tensors to llama.cpp's names with `gguf.TensorNameMap`, permutes the q/k projections where
llama.cpp's rope pairs dimensions differently (llama), writes Qwen-VL's M-RoPE sections, and
writes an f32 or f16 GGUF with the full tokenizer. Other types are made from that file by `quantize.py` (llama.cpp's own quantizer).

    source = text_source(loaded)           # tensors, hyper-parameters, tokenizer
    write_text_gguf(source, "model-f16.gguf", "f16")
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.errors import UnsupportedArchError
from casseat_edge.formats.ggml_quant import has_text_gguf, text_arch
from casseat_edge.models import ArchSpec, arch_names

# llama.cpp token types (llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# our HF tokenizers' pre-tokenizer -> llama.cpp's name for the same split (SmolLM2: digits one by one)
PRE_TOKENIZERS = {("Digits", "ByteLevel"): "smollm", ("ByteLevel",): "gpt2"}


@dataclasses.dataclass
class TextSource:
    """What the writer needs: llama.cpp-named tensors plus hyper-parameters and the tokenizer."""

    arch: str  # gguf architecture name ("llama")
    name: str
    tensors: dict[str, np.ndarray]  # gguf name -> float32 array (q/k already permuted)
    hparams: dict[str, Any]
    tokenizer: Any
    chat_template: str | None


def supported_text_archs() -> list[str]:
    return arch_names(has_text_gguf)


def text_source(loaded: Any) -> TextSource:
    """Extract the decoder of a loaded HF model (`casseat_edge.models.LoadedModel`)."""
    model = loaded.model
    arch = text_arch(loaded)
    config = model.config.get_text_config()
    state = _hf_text_state(model, arch.text_prefix + ".", arch.lm_head + ".weight")
    hparams = _llama_hparams(config, arch)
    tensors = _gguf_tensors(state, hparams, arch)
    template = getattr(loaded.processor, "chat_template", None) or getattr(
        loaded.tokenizer, "chat_template", None
    )
    import gguf

    name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_arch)]
    return TextSource(
        name, gguf_model_name(loaded.ref.spec), tensors, hparams, loaded.tokenizer, template
    )


def gguf_model_name(spec: str) -> str:
    """`general.name` for a model spec: a path gives only its last component, so a shared GGUF
    does not carry the exporting machine's directory layout (user names, project paths)."""
    if ":" in spec.split("/", 1)[0] and not Path(spec).exists():  # tiny:..., embedded:...
        return spec
    return Path(spec).name or spec


def _hf_text_state(model: Any, prefix: str, head: str) -> dict[str, np.ndarray]:
    """Decoder tensors renamed to the plain `model.layers.N...` / `lm_head` HF names."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix):
            state["model." + name[len(prefix) :]] = tensor
        elif name == head:
            state["lm_head.weight"] = tensor
    return {k: v.detach().float().cpu().numpy() for k, v in state.items()}


def _llama_hparams(config: Any, arch: type[ArchSpec]) -> dict[str, Any]:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_scaling", None)
    if rope and rope.get("rope_type", rope.get("type")) not in (None, "default", "mrope"):
        raise UnsupportedArchError(
            f"rope scaling {rope!r} is not supported by the GGUF exporter; supported: none"
        )
    return {
        "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size,
        "block_count": config.num_hidden_layers,
        "feed_forward_length": config.intermediate_size,
        "head_count": heads,
        "head_count_kv": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "rms_eps": float(config.rms_norm_eps),
        "rope_theta": float(getattr(config, "rope_theta", 10000.0)),
        "vocab_size": config.vocab_size,
        "tied": bool(getattr(config, "tie_word_embeddings", False)),
        "rope_sections": _mrope_sections(rope) if arch.mrope else None,
    }


def _mrope_sections(rope: dict[str, Any] | None) -> list[int]:
    """Qwen2-VL splits each head's rotary pairs into (time, height, width) sections; llama.cpp
    reads four (the fourth unused here)."""
    sections = list((rope or {}).get("mrope_section") or [])
    if not sections:
        raise UnsupportedArchError("Qwen2-VL config has no rope_scaling.mrope_section")
    return (sections + [0, 0, 0, 0])[:4]


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotates the two halves of each head (`rotate_half`); llama.cpp's llama rope rotates
    adjacent pairs. Reorder each head's output rows from [h0.., h1..] to interleaved pairs."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (
        weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_tensors(
    state: dict[str, np.ndarray], hp: dict[str, Any], arch: type[ArchSpec]
) -> dict[str, np.ndarray]:
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), hp["block_count"])
    out = {}
    for name, array in state.items():
        if name == "lm_head.weight" and hp["tied"]:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if arch.gguf_permute_qk and name.endswith("self_attn.q_proj.weight"):
            array = permute_for_rope(array, hp["head_count"])
        elif arch.gguf_permute_qk and name.endswith("self_attn.k_proj.weight"):
            array = permute_for_rope(array, hp["head_count_kv"])
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UnsupportedArchError(
                f"tensor {name!r} has no llama.cpp name for {arch.gguf_arch.lower()}"
            )
        out[new] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def write_text_gguf(source: TextSource, path: str | Path, dtype: str) -> Path:
    """Write an f32 or f16 GGUF (1-D tensors stay f32, as llama.cpp expects)."""
    import gguf

    assert dtype in ("f32", "f16"), dtype
    writer = gguf.GGUFWriter(str(path), source.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.name)
    writer.add_file_type(
        gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    )
    _add_hparams(writer, source.hparams)
    add_tokenizer(writer, source.tokenizer, source.hparams["vocab_size"], source.chat_template)
    for name, array in source.tensors.items():
        if dtype == "f16" and array.ndim > 1:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_hparams(writer: Any, hp: dict[str, Any]) -> None:
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_vocab_size(hp["vocab_size"])
    if hp["rope_sections"]:
        writer.add_rope_dimension_sections(hp["rope_sections"])
    if hp["head_dim"] * hp["head_count"] != hp["embedding_length"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])


def pre_tokenizer_name(spec: dict[str, Any] | None) -> str:
    """llama.cpp's pre-tokenizer name for an HF `tokenizer.json` pre_tokenizer section."""
    parts = spec.get("pretokenizers", [spec]) if spec else []
    key = tuple(p["type"] for p in parts)
    if key not in PRE_TOKENIZERS:
        raise UnsupportedArchError(
            f"pre-tokenizer {' + '.join(key) or 'none'} has no llama.cpp equivalent here; "
            f"supported: {', '.join(' + '.join(k) for k in PRE_TOKENIZERS)}"
        )
    return PRE_TOKENIZERS[key]


def tokenizer_tables(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """tokens, token types, merges and special ids of a byte-level BPE HF fast tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise UnsupportedArchError(
            f"tokenizer model {spec['model']['type']!r} is not supported; supported: BPE"
        )
    if len(tokenizer) > vocab_size:
        raise UnsupportedArchError(
            f"tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings"
        )
    added = {t["id"]: t for t in spec["added_tokens"]}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = [
        (CONTROL if added[i]["special"] else USER_DEFINED) if i in added else NORMAL
        for i in range(len(tokens))
    ]
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre_tokenizer_name(spec.get("pre_tokenizer")),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, chat_template: str | None) -> None:
    tables = tokenizer_tables(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tables["pre"])
    writer.add_token_list(tables["tokens"])
    writer.add_token_types(tables["types"])
    writer.add_token_merges(tables["merges"])
    for key, setter in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if tables[key] is not None:
            setter(tables[key])
    # our chat templates write every special token themselves; llama.cpp must not add BOS/EOS
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
