"""Cas-SEAT data synthesis (teachers, cascade prompting, DDF, mixing) and SFT. Built by issues 3 (synth) and 4 (sft); registers its teachers in casseat_edge.registry.TEACHERS.

This stage package is not implemented yet: it holds no entries, and the CLI says so for its
commands.
"""

from __future__ import annotations
