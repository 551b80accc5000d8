"""Cascade, policies, backends (torch, onnxruntime, llama.cpp, vllm), profiler, evaluation and report. Built by issues 6 and 7; registers backends in casseat_edge.registry.BACKENDS.

This stage package is not implemented yet: it holds no entries, and the CLI says so for its
commands.
"""

from __future__ import annotations
