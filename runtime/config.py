"""`CascadeConfig`: how a `Cascade` runs (backend, policy, budgets, KV reuse, speculative drafts,
captions) and the options its backend opens the model with. One frozen config, validated here,
used by `Cascade(model, config)`, the `run` command (its flags are generated from the fields) and
`EvalConfig` (which derives one).

    config = CascadeConfig(backend="llama.cpp", policy="cot", threads=4)
    config = load_config(CascadeConfig, "cascade.yaml", {"max_new_tokens": 64})
    config.backend_options()   # {"threads": 4}: what the backend's constructor is given

Backend options (`BACKEND_OPTIONS`) left at their default (0, "") are not passed, so each
backend keeps its own default (llama.cpp's context, torch's dtype, vLLM's device). One that is set
must be a keyword of the backend's constructor, or the config is a `ConfigError` naming the flag.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import runtime.backends  # noqa: F401  (registers the backends `backend` is checked against)
from casseat_edge.config import StageConfig, check_threads, option
from casseat_edge.errors import ConfigError, UnknownNameError
from casseat_edge.prompts import Policy
from casseat_edge.registry import BACKENDS

# fields passed on to the backend's constructor (under the same keyword) when not at their default
BACKEND_OPTIONS = ("threads", "quant", "n_ctx", "device", "dtype", "temperature", "seed")
LOWER_BOUNDS = {
    "max_new_tokens": 1,
    "max_refine_rounds": 0,
    "draft_tokens": 0,
    "n_ctx": 0,
    "temperature": 0,
    "seed": 0,
}


@dataclasses.dataclass(frozen=True)
class CascadeConfig(StageConfig):
    """How a `Cascade` runs one problem, and the options its backend opens the model with."""

    backend: str = option(
        "torch",
        "backend: torch | llama.cpp | onnxruntime | vllm (GPU); `casseat-edge list backends`",
    )
    policy: Policy = option("cas-seat", "cascade policy")
    max_new_tokens: int = option(256, "generated tokens per stage at most")
    max_refine_rounds: int = option(1, "cas-seat-refine: re-solve and check rounds at most")
    kv_reuse: bool = option(
        True, "continue each stage on the earlier stages' KV cache (off: re-prefill, to compare)"
    )
    draft_tokens: int = option(
        8,
        "speculative decoding (greedy, token-level backends): check up to this many tokens "
        "drafted from the model's earlier replies in one pass (0: one token per pass)",
    )
    captions: bool | None = option(
        None,
        "vision models also read the caption after the image (unset: as the model was trained, "
        "its casseat.json)",
    )
    threads: int = option(0, "CPU threads for the backend (0: its default, all cores)")
    quant: str = option(
        "",
        "the variant to load where an export holds several (onnxruntime: fp32|int8|int4); vllm: "
        "its load-time quantization",
    )
    n_ctx: int = option(0, "context length in tokens (llama.cpp; 0: its default)")
    device: str = option("", "device (torch, onnxruntime: cpu; vllm: cuda; '': the backend's)")
    dtype: str = option("", "weight dtype (torch: float32; vllm: auto; '': the backend's)")
    temperature: float = option(0.0, "sampling temperature (0: greedy)")
    seed: int = option(0, "sampling seed (with --temperature > 0)")

    def __post_init__(self) -> None:
        for name, low in LOWER_BOUNDS.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{flag(name)}: expected >= {low}, found {getattr(self, name)}")
        if self.threads:  # every backend: 100,000 threads abort BLAS
            check_threads(self.threads)
        self._check_backend()

    def _check_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise UnknownNameError(
                f"--backend: unknown backend {self.backend!r}; expected one of: "
                f"{', '.join(BACKENDS.names())}"
            )
        takes = backend_keywords(self.backend)
        refused = [name for name in self.backend_options() if name not in takes]
        if refused:
            flags = ", ".join(flag(name) for name in refused)
            accepted = ", ".join(flag(n) for n in BACKEND_OPTIONS if n in takes)
            raise ConfigError(
                f"{flags}: not an option of the {self.backend} backend, which takes {accepted}"
            )

    def backend_options(self) -> dict[str, Any]:
        """The backend options that are set: keywords for the backend's constructor."""
        fields = self.__dataclass_fields__
        return {
            name: getattr(self, name)
            for name in BACKEND_OPTIONS
            if getattr(self, name) != fields[name].default
        }


def backend_keywords(backend: str) -> set[str]:
    """The keyword arguments the backend's constructor takes (besides the model)."""
    return set(inspect.signature(BACKENDS.get(backend)).parameters) - {"model"}


def shared_option(name: str) -> Any:
    """A field of another stage's config that is a `CascadeConfig` field: its default and help
    (`EvalConfig` keeps its flat fields, which its flags and manifests are made of)."""
    field = CascadeConfig.__dataclass_fields__[name]
    return option(field.default, field.metadata["help"])


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")
