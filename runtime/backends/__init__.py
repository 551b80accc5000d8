"""Runtime backends, registered in `casseat_edge.registry.BACKENDS` on import.

`torch` and `onnxruntime` need only the core install; `llama.cpp` imports llama-cpp-python and
`vllm` imports vLLM when a model is opened, so listing backends works without them and opening
one without it raises `BackendUnavailableError`. Token-level engines (`Engine`) run under
`Conversation`, turn-level ones (`TurnEngine`: vLLM) under `TurnConversation`; `open_conversation`
picks the right one.
"""

from __future__ import annotations

from runtime.backends import (  # noqa: F401  (registers the entries)
    llamacpp,
    onnxruntime_backend,
    torch_backend,
    vllm_backend,
)
from runtime.backends.base import Conversation, Encoded, Engine, TurnOutput
from runtime.backends.turns import (
    Generated,
    TurnConversation,
    TurnEngine,
    TurnPrompt,
    open_conversation,
)

__all__ = [
    "Conversation",
    "Encoded",
    "Engine",
    "Generated",
    "TurnConversation",
    "TurnEngine",
    "TurnOutput",
    "TurnPrompt",
    "open_conversation",
]
