"""Runtime backends, registered in `casseat_edge.registry.BACKENDS` on import.

`torch` and `onnxruntime` need only the core install; `llama.cpp` imports llama-cpp-python when
a model is opened, so listing backends works without it and opening one without it raises
`BackendUnavailableError`.
"""

from __future__ import annotations

from runtime.backends import (  # noqa: F401  (registers the entries)
    llamacpp,
    onnxruntime_backend,
    torch_backend,
)
from runtime.backends.base import Conversation, Encoded, Engine, TurnOutput

__all__ = ["Conversation", "Encoded", "Engine", "TurnOutput"]
