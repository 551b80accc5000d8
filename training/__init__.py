"""Training-side stages: `training.synth` (Cas-SEAT data synthesis: teachers, cascade prompting,
Double-level Data Filtering, mixing). Supervised fine-tuning (`training.sft`) is still to come.

Teachers register in `casseat_edge.registry.TEACHERS` when `training.synth.teachers` is imported.
"""

from __future__ import annotations
