"""The runtime: `Cascade` runs a cascade policy (direct, cot, seat, cas-seat, cas-seat-refine)
on one backend and returns a typed `Result` with a per-stage latency profile.

    from runtime import Cascade
    result = Cascade("tiny:smolvlm", backend="torch").solve("img.png", "What is x?")

Backends register in `casseat_edge.registry.BACKENDS` on import (`torch`, `llama.cpp`); the
evaluation loop and report come with issue 7.
"""

from __future__ import annotations

from runtime.cascade import Cascade
from runtime.types import Result, StageResult

__all__ = ["Cascade", "Result", "StageResult"]
