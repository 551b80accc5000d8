"""The runtime: `Cascade` runs a cascade policy (direct, cot, seat, cas-seat, cas-seat-refine)
on one backend and returns a typed `Result` with a per-stage latency profile.

    from runtime import Cascade, CascadeConfig
    result = Cascade("tiny:smolvlm", backend="torch").solve("img.png", "What is x?")
    cascade = Cascade("tiny:smolvlm", CascadeConfig(policy="cot", max_new_tokens=64))

Backends register in `casseat_edge.registry.BACKENDS` on import (`torch`, `llama.cpp`); the
evaluation loop and report come with issue 7.
"""

from __future__ import annotations

from runtime.cascade import Cascade
from runtime.config import CascadeConfig
from runtime.types import Result, StageResult

__all__ = ["Cascade", "CascadeConfig", "Result", "StageResult"]
