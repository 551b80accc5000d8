"""GGUF (text + mmproj) and ONNX (split vision/embeddings/decoder) exporters, verified against the source model. Built by issue 5; registers in casseat_edge.registry.EXPORTERS.

This stage package is not implemented yet: it holds no entries, and the CLI says so for its
commands.
"""

from __future__ import annotations
