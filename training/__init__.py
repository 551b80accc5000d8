"""Training-side stages: `training.synth` (Cas-SEAT data synthesis: teachers, cascade prompting,
Double-level Data Filtering, mixing) and `training.sft` (supervised fine-tuning with the Hugging
Face Trainer and peft: LoRA, QLoRA, full).

Teachers register in `casseat_edge.registry.TEACHERS` when `training.synth.teachers` is imported.
"""

from __future__ import annotations
