"""Text-only decoder families: Llama (SmolLM2) and Qwen2. They see no image: the one preprocessing
path writes the image's caption into the prompt instead (caption-augmented, as MathVista does for
text-only LLMs). `tiny:llama` is a seeded random Llama with the SmolLM2 tokenizer and template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from casseat_edge.models.archs import ArchSpec, chatml_template
from casseat_edge.preprocess import processor_tokenizer


def tiny_llama_config(tokenizer: Any, **overrides: Any):
    """A 2-layer, 64-wide Llama config over `tokenizer`'s vocab (the text tower of every tiny)."""
    from transformers import LlamaConfig

    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )
    values.update(overrides)
    return LlamaConfig(**values)


def save_tiny(
    out: Path,
    model: Any,
    processor: Any,
    arch: type[ArchSpec],
    seed: int,
    source: str | None = None,
) -> None:
    """Save a tiny model + processor as an ordinary HF directory with our manifest (`source`:
    the spec it answers to, `tiny:<arch>` by default)."""
    from casseat_edge.artifacts import write_manifest

    _fill_zero_embedding_rows(model, seed)
    model.generation_config.eos_token_id = processor_tokenizer(processor).eos_token_id
    model.generation_config.pad_token_id = processor_tokenizer(processor).pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    write_manifest(
        out,
        "model",
        {"source": source or f"tiny:{arch.tiny_name}", "seed": seed},
        params=params,
        architecture=arch.architecture,
    )


def _fill_zero_embedding_rows(model: Any, seed: int) -> None:
    """`nn.Embedding(padding_idx=...)` starts the pad token's row at zero; our pad token is
    `<|im_end|>` (the end of every turn), and llama.cpp's qwen2vl graph turns an all-zero row into
    NaN logits. Give such rows ordinary random values (seeded) like every other token."""
    import torch

    weight = model.get_input_embeddings().weight
    zero = weight.detach().abs().sum(-1) == 0
    if bool(zero.any()):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight[zero] = torch.randn(int(zero.sum()), weight.shape[1], generator=generator) * 0.02


def seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


class LlamaArch(ArchSpec):
    """Llama-architecture text decoder (SmolLM2, the Idefics3 text tower)."""

    architecture = "LlamaForCausalLM"
    family = "llama"
    model_type = "llama"
    vision = False
    auto_class = "AutoModelForCausalLM"
    summary = "Llama / SmolLM2 text decoder (reads the image caption)"
    tiny_name = "llama"
    aliases = ("MistralForCausalLM",)
    text_prefix = "model"
    gguf_arch = "LLAMA"
    gguf_permute_qk = True  # llama.cpp's llama rope rotates adjacent pairs, HF halves

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        from transformers import AutoTokenizer, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.chat_template = chatml_template(None)
        seeded(seed)
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
        save_tiny(out, model, tokenizer, cls, seed)


class Qwen2Arch(ArchSpec):
    """Qwen2 / Qwen2.5 text decoder."""

    architecture = "Qwen2ForCausalLM"
    family = "qwen2"
    model_type = "qwen2"
    vision = False
    auto_class = "AutoModelForCausalLM"
    summary = "Qwen2 / Qwen2.5 text decoder (reads the image caption)"
    tiny_name = "qwen2"
    text_prefix = "model"
    gguf_arch = "QWEN2"  # HF's half-split rope, as llama.cpp's qwen2: no q/k permutation

    @classmethod
    def build_tiny(cls, out: Path, tokenizer_dir: Path, seed: int) -> None:
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.chat_template = chatml_template(None)
        values = tiny_llama_config(tokenizer).to_dict()
        values.update(architectures=[cls.architecture], model_type="qwen2")
        for key in ("mlp_bias", "attention_bias", "head_dim", "pretraining_tp"):
            values.pop(key, None)
        seeded(seed)
        save_tiny(out, Qwen2ForCausalLM(Qwen2Config(**values)), tokenizer, cls, seed)
