"""Cas-SEAT data synthesis: teachers run the cascade (stage 1 reason, stage 2 self-evaluate) or the
long SEAT prompt, Double-level Data Filtering keeps what is right, and CoT and evaluation samples
are mixed into a chat-format dataset.

    from training.synth import SynthConfig, synthesize
    stats = synthesize(SynthConfig(problems="bench", teacher="procedural", out="synth"))
"""

from __future__ import annotations

from training.synth.config import SynthConfig
from training.synth.run import synthesize

__all__ = ["SynthConfig", "synthesize"]
