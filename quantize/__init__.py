"""bitsandbytes int8/nf4 checkpoints for the torch path and quantizer helpers shared by the exporters. Built by issue 5; registers quantization types in casseat_edge.registry.QUANT.

This stage package is not implemented yet: it holds no entries, and the CLI says so for its
commands.
"""

from __future__ import annotations
