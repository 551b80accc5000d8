"""llama.cpp's weight rounding, reproduced in torch: which GGML type each decoder matrix of a GGUF
gets (`tensor_types`) and what its weights become (`fake_quantize`).

Quantization-aware training (`casseat-edge train --qat q4_k_m`) trains the model as the GGUF will
run it, so it needs both halves:

- `tensor_type(ftype, name, columns, n_layers, tied)`: llama.cpp's per-tensor recipe for a file
  type (`llama_tensor_get_type` for a dense llama-family decoder): q4_k_m gives attn_v and
  ffn_down q6_K in the layers `more_bits` picks and q4_K elsewhere; the tied embedding (llama.cpp's
  output matrix then) gets q6_K; rows whose width is not a multiple of 256 cannot hold K-quant
  blocks and fall back (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0). SmolLM2's 576-wide rows make
  q4_k_m mostly q5_0. `tests/test_ggml_quant.py` checks the recipe against llama.cpp's files.
- `fake_quantize(weight, ggml_type)`: the dequantized weight. q8_0, q5_0 and q4_0 are llama.cpp's
  reference rounding, bit for bit (32-wide blocks, an f16 scale from the block's largest
  magnitude). q4_K and q6_K take llama.cpp's block layout and 6/8-bit sub-block scales but skip
  its per-block scale search (21 and 19 candidate scales), which would cost seconds per training
  step: min-max sub-block ranges for q4_K, one least-squares rescale for q6_K. Their rounding
  error is measured against llama.cpp's in the same test.

    types = tensor_types("q4_k_m", loaded)        # module name -> "q5_0" / "q4_K" / ...
    rounded = fake_quantize(weight, types["model.text_model.layers.0.mlp.down_proj"])
"""

from __future__ import annotations

from typing import Any

BLOCK = 32  # q8_0 / q5_0 / q4_0 block
SUPER = 256  # K-quant super-block (QK_K)

# file type -> the type of an ordinary matrix; `tensor_type` adds the exceptions
FTYPE_DEFAULT = {"q8_0": "q8_0", "q5_0": "q5_0", "q4_0": "q4_0", "q4_k_m": "q4_K"}
QAT_TYPES = tuple(FTYPE_DEFAULT)  # the file types `--qat` accepts
K_FALLBACK = {"q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0"}  # rows not a multiple of 256


def more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
    between them get the larger type in the *_M recipes."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def tensor_type(ftype: str, name: str, columns: int, n_layers: int, tied: bool) -> str:
    """The GGML type llama.cpp's quantizer gives the 2-D GGUF tensor `name` (rows `columns`
    wide) of a dense llama-family decoder with `n_layers` blocks, for file type `ftype`."""
    if ftype not in FTYPE_DEFAULT:
        raise ValueError(f"no recipe for file type {ftype!r}; known: {', '.join(QAT_TYPES)}")
    kind = FTYPE_DEFAULT[ftype]
    role = name.rsplit(".", 2)[-2] if name.startswith("blk.") else name.split(".")[0]
    if role == "output" or (tied and role == "token_embd"):  # the output matrix
        kind = "q8_0" if columns % SUPER or kind == "q8_0" else "q6_K"
    elif ftype == "q4_k_m" and role in ("attn_v", "ffn_down"):
        kind = "q6_K" if more_bits(int(name.split(".")[1]), n_layers) else kind
    if kind in K_FALLBACK and columns % SUPER:
        kind = K_FALLBACK[kind]
    return kind


def tensor_types(ftype: str, loaded: Any) -> dict[str, str]:
    """Module name -> GGML type of every matrix of a loaded model's decoder in a `ftype` GGUF
    (`casseat_edge.models.LoadedModel`): the linear layers, the tied lm_head, and an untied
    input embedding (`token_embd`, which llama.cpp quantizes too)."""
    config = loaded.model.config.get_text_config()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    modules = dict(loaded.model.named_modules())
    names = gguf_linear_names(loaded)
    if not tied:
        embedding = loaded.model.get_input_embeddings()
        names.update({m: "token_embd.weight" for m, mod in modules.items() if mod is embedding})
    out = {}
    for module, name in names.items():
        columns = modules[module].weight.shape[1]
        out[module] = tensor_type(ftype, name, columns, config.num_hidden_layers, tied)
    return out


def has_text_gguf(arch: Any) -> bool:
    """Whether the architecture entry names the llama.cpp architecture of its decoder."""
    return arch.gguf_arch is not None


def text_arch(loaded: Any) -> Any:
    """The architecture entry of a loaded model's decoder (its config's `architectures[0]`)."""
    from casseat_edge.models import supported_arch

    architecture = (loaded.model.config.architectures or [loaded.arch.architecture])[0]
    return supported_arch(architecture, "GGUF export", has_text_gguf)


def gguf_linear_names(loaded: Any) -> dict[str, str]:
    """Every linear layer of the decoder (module name in the loaded model) -> the GGUF weight it
    becomes; a tied lm_head is `token_embd.weight`, the tensor llama.cpp multiplies by then."""
    import gguf
    import torch

    from casseat_edge.errors import UnsupportedArchError

    arch = text_arch(loaded)
    config = loaded.model.config.get_text_config()
    names = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, arch.gguf_arch), config.num_hidden_layers
    )
    tied = bool(getattr(config, "tie_word_embeddings", False))
    prefix = arch.text_prefix + "."
    out = {}
    for module_name, module in loaded.model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if module_name == arch.lm_head:
            out[module_name] = "token_embd.weight" if tied else "output.weight"
        elif module_name.startswith(prefix):
            hf = "model." + module_name[len(prefix) :] + ".weight"
            new = names.get_name(hf, try_suffixes=(".weight",))
            if new is None:
                raise UnsupportedArchError(f"{hf!r} has no llama.cpp name for {arch.gguf_arch}")
            out[module_name] = new
    return out


# --- rounding ------------------------------------------------------------------------------------


def fake_quantize(weight: Any, ggml_type: str) -> Any:
    """`weight` ([rows, columns], float) as a `ggml_type` GGUF tensor holds it, dequantized to
    float32. f32/f16/bf16 are returned as stored."""
    import torch

    w = weight.detach().to(torch.float32)
    if ggml_type in ("f32", "F32"):
        return w.clone()
    if ggml_type in ("f16", "F16", "bf16", "BF16"):
        dtype = torch.float16 if ggml_type.lower() == "f16" else torch.bfloat16
        return w.to(dtype).to(torch.float32)
    if ggml_type not in ROUNDERS:
        raise ValueError(f"no rounding for GGML type {ggml_type!r}; known: {', '.join(ROUNDERS)}")
    size = SUPER if ggml_type.endswith("_K") else BLOCK
    if w.shape[-1] % size:
        raise ValueError(f"{ggml_type} needs rows that are a multiple of {size}, got {w.shape[-1]}")
    return ROUNDERS[ggml_type](w.reshape(-1, size)).reshape(w.shape)


def _half(x: Any) -> Any:
    """Through an f16 scale field, as ggml stores it."""
    import torch

    return x.to(torch.float16).to(torch.float32)


def _round(x: Any) -> Any:
    """C's roundf / ggml's nearest_int: halves away from zero (torch.round goes to even)."""
    import torch

    return x.abs().add_(0.5).floor_().mul_(torch.sign(x))


def _inverse(d: Any) -> Any:
    import torch

    return torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, 1.0, d))


def _q8_0(blocks: Any) -> Any:
    d = blocks.abs().amax(-1, keepdim=True) / 127
    return _round(blocks * _inverse(d)).mul_(_half(d))


def _symmetric(blocks: Any, half: int) -> Any:
    """q5_0 (half 16) / q4_0 (half 8): d = signed peak / -half, levels 0..2*half-1, trunc."""
    import torch

    peak = torch.gather(blocks, -1, blocks.abs().argmax(-1, keepdim=True))
    d = peak / -half
    levels = blocks * _inverse(d)  # then in place: one block-sized buffer, not five
    levels.add_(half + 0.5).floor_().clamp_(max=2 * half - 1).sub_(half)
    return levels.mul_(_half(d))


def _q4_k(supers: Any) -> Any:
    """8 sub-blocks of 32: x ~ d*sc*l - dmin*m, l in 0..15, 6-bit sc and m (min-max ranges)."""
    import torch

    sub = supers.reshape(-1, 8, 32)
    low = torch.clamp(sub.amin(-1), max=0.0)
    scale = (sub.amax(-1) - low) / 15
    minimum = -low
    max_scale = scale.amax(-1, keepdim=True)
    max_min = minimum.amax(-1, keepdim=True)
    sc = torch.clamp(_round(scale * _inverse(max_scale) * 63), max=63)
    m = torch.clamp(_round(minimum * _inverse(max_min) * 63), max=63)
    d = _half(max_scale / 63) * sc
    dm = _half(max_min / 63) * m
    levels = torch.clamp(_round((sub + dm[..., None]) * _inverse(d)[..., None]), 0, 15)
    return (d[..., None] * levels - dm[..., None]).reshape(supers.shape)


def _q6_k(supers: Any) -> Any:
    """16 sub-blocks of 16: x ~ d*sc*l, l in -32..31, 8-bit signed sc (one least-squares scale
    per sub-block, weighted by x^2, as llama.cpp's first estimate)."""
    import torch

    sub = supers.reshape(-1, 16, 16)
    peak = torch.gather(sub, -1, sub.abs().argmax(-1, keepdim=True))
    first = torch.clamp(_round(sub * (-32 * _inverse(peak))), -32, 31)
    weight = sub * sub
    num = (weight * sub * first).sum(-1)
    den = (weight * first * first).sum(-1)
    scale = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.zeros_like(num))
    top = torch.gather(scale, -1, scale.abs().argmax(-1, keepdim=True))
    inv = -128 * _inverse(top)
    d_super = _half(_inverse(inv))
    sc = torch.clamp(_round(inv * scale), -128, 127)
    d = d_super * sc
    levels = torch.clamp(_round(sub * _inverse(d)[..., None]), -32, 31)
    return (d[..., None] * levels).reshape(supers.shape)


ROUNDERS = {
    "q8_0": _q8_0,
    "q5_0": lambda b: _symmetric(b, 16),
    "q4_0": lambda b: _symmetric(b, 8),
    "q4_K": _q4_k,
    "q6_K": _q6_k,
}
