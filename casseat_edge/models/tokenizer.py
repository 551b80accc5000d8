"""Rebuild a GGUF's byte-level BPE tokenizer as a Hugging Face fast tokenizer.

transformers' own GGUF tokenizer conversion yields an SPM-style Llama tokenizer for SmolLM2, which
is wrong for export (llama.cpp then fails inside tokenization; ENVIRONMENT.md). SmolLM2 is
byte-level BPE with digits split one by one, so we build it from the GGUF's tokens and merges:
Digits(individual) -> ByteLevel(no prefix space), ByteLevel decoder, control tokens as specials.
A test checks the ids equal llama.cpp's on math, unicode, whitespace runs and chat markup.

    tok = tokenizer_from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

`GgufChatTemplate` renders a GGUF's own chat template (for the llama.cpp teacher and backend).
`subset_tokenizer` cuts a BPE tokenizer down to the tokens a corpus uses (the demo student's
domain vocabulary), keeping those texts' tokens and llama.cpp compatibility.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from casseat_edge.errors import ModelSpecError

CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
SUPPORTED_PRE = ("smollm", "default", "gpt2")


def gguf_fields(path: str | Path, prefix: str | tuple[str, ...] = "") -> dict[str, Any]:
    """The GGUF's metadata key/values (decoded) whose key starts with `prefix`."""
    from casseat_edge.formats.gguf_header import read_gguf_header

    return read_gguf_header(path, prefix).fields


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


def subset_tokenizer(tokenizer: Any, texts: Iterable[str]) -> Any:
    """A smaller byte-level BPE tokenizer that tokenizes `texts` exactly as `tokenizer` does.

    Kept: the special and other added tokens, the 256 byte tokens (so any text still tokenizes,
    in smaller pieces), every token `tokenizer` gives on `texts`, and the merge parents of those
    tokens (closed under merging). The merges among kept tokens keep their order, so BPE applies
    the same merges on these texts and llama.cpp reads the result like any other BPE vocabulary.
    Ids are renumbered in the original order (special tokens keep their places at the front;
    added tokens outside the BPE vocabulary come last).
    A small model trained from scratch on one domain gains most: its embedding and output layer
    shrink from the full vocabulary to the few thousand tokens the domain uses.
    """
    import json

    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ModelSpecError(f"tokenizer model {spec['model']['type']!r}: only BPE can be subset")
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]
    ]
    parents = {}
    for a, b in merges:
        parents.setdefault(a + b, (a, b))
    specials = {t["content"] for t in spec["added_tokens"]}
    keep = set(ByteLevel.alphabet()) | {t for t in specials if t in vocab}
    stack = [
        tokenizer.convert_ids_to_tokens(i)
        for text in texts
        for i in tokenizer(text, add_special_tokens=False)["input_ids"]
    ]
    while stack:
        token = stack.pop()
        if token in keep:
            continue
        keep.add(token)
        stack.extend(parents.get(token, ()))
    ordered = sorted(keep, key=lambda t: vocab.get(t, len(vocab)))
    new_vocab = {t: i for i, t in enumerate(ordered)}
    spec["model"]["vocab"] = new_vocab
    spec["model"]["merges"] = [
        [a, b] for a, b in merges if a in keep and b in keep and a + b in keep
    ]
    # added tokens outside the BPE vocabulary (e.g. a processor's image markup) follow it
    added = sorted(spec["added_tokens"], key=lambda t: t["id"])
    outside = [t["content"] for t in added if t["content"] not in new_vocab]
    ids = {**new_vocab, **{t: len(new_vocab) + i for i, t in enumerate(outside)}}
    spec["added_tokens"] = [{**t, "id": ids[t["content"]]} for t in added]
    backend = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token,
        additional_special_tokens=list(tokenizer.additional_special_tokens),
        chat_template=tokenizer.chat_template,
        model_input_names=list(tokenizer.model_input_names),
        clean_up_tokenization_spaces=False,
        model_max_length=tokenizer.model_max_length,
    )
