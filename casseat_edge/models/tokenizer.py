"""Rebuild a GGUF's byte-level BPE tokenizer as a Hugging Face fast tokenizer.

transformers' own GGUF tokenizer conversion yields an SPM-style Llama tokenizer for SmolLM2, which
is wrong for export (llama.cpp then fails inside tokenization; ENVIRONMENT.md). SmolLM2 is
byte-level BPE with digits split one by one, so we build it from the GGUF's tokens and merges:
Digits(individual) -> ByteLevel(no prefix space), ByteLevel decoder, control tokens as specials.
A test checks the ids equal llama.cpp's on math, unicode, whitespace runs and chat markup.

    tok = tokenizer_from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

`GgufChatTemplate` renders a GGUF's own chat template (for the llama.cpp teacher and backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from casseat_edge.errors import ModelSpecError

CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
SUPPORTED_PRE = ("smollm", "default", "gpt2")


def gguf_fields(path: str | Path, prefix: str | tuple[str, ...] = "") -> dict[str, Any]:
    """The GGUF's metadata key/values (decoded) whose key starts with `prefix`. Opening a file
    takes seconds (the reader parses every tensor header), so ask for everything at once."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefix)}


def tokenizer_from_gguf(path: str | Path):
    """A `PreTrainedTokenizerFast` equal to the GGUF's own byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    meta = gguf_fields(path, ("tokenizer.", "general.architecture", "llama.context_length"))
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ModelSpecError(
            f"{path}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not byte-level BPE "
            "('gpt2'); only BPE GGUF tokenizers can be rebuilt"
        )
    if meta.get("tokenizer.ggml.pre", "default") not in SUPPORTED_PRE:
        raise ModelSpecError(
            f"{path}: pre-tokenizer {meta['tokenizer.ggml.pre']!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_PRE)}"
        )
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type", [])
    specials = [tokens[i] for i, t in enumerate(types) if t == CONTROL_TOKEN_TYPE]

    def special(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None else None

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=special("bos"),
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding"),
        additional_special_tokens=specials,
        chat_template=meta.get("tokenizer.chat_template"),
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        model_max_length=int(meta.get("llama.context_length", 2048)),
    )
    return tok


class GgufChatTemplate:
    """`apply_chat_template` over the GGUF's `tokenizer.chat_template` (Jinja, as HF renders it)."""

    def __init__(self, path: Path, bos: str, eos: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        source = gguf_fields(path, "tokenizer.chat_template").get("tokenizer.chat_template")
        if not source:
            raise ModelSpecError(f"{path}: the GGUF has no tokenizer.chat_template; it cannot chat")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(source)
        self.bos, self.eos = bos, eos

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tokenize: bool = False, add_generation_prompt=True
    ) -> str:
        assert not tokenize, "GgufChatTemplate only renders text"
        return self.template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos,
            eos_token=self.eos,
        )
