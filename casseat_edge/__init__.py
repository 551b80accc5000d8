"""casseat-edge: Cas-SEAT (cascaded self-evaluation) for small vision-language models on the edge.

The core package: formats, registries, configs, manifests, answers, the synthetic benchmark, model
specs and the one preprocessing path. Stage packages (`training`, `quantize`, `export`, `runtime`)
build on it; `casseat_cli.cli` is the `casseat-edge` command.
"""

from __future__ import annotations

__version__ = "0.1.0"
