"""Teachers for Cas-SEAT synthesis, registered in `casseat_edge.registry.TEACHERS` by spec prefix.

teacher = make_teacher("embedded:smollm2-135m-instruct", config)
for output in teacher.run(items, mode="cas-seat"): ...
"""

from __future__ import annotations

import importlib

from casseat_edge.registry import TEACHERS
from training.synth.teachers.base import ChatTeacher, Generation, SynthItem, Teacher, TeacherOutput

TEACHER_MODULES = ("procedural", "llamacpp", "hf", "openai", "vllm")


def register_all() -> None:
    for name in TEACHER_MODULES:
        importlib.import_module(f"training.synth.teachers.{name}")


def make_teacher(spec: str, config: object) -> Teacher:
    """Build the teacher a spec names: `procedural`, `llama.cpp:PATH`, `embedded:NAME`, `hf:SPEC`,
    `openai:URL#MODEL`, `vllm:MODEL`."""
    register_all()
    prefix, _, argument = spec.partition(":")
    if prefix not in TEACHERS and spec in TEACHERS:
        prefix, argument = spec, ""
    return TEACHERS.get(prefix)(spec, argument, config)


__all__ = ["ChatTeacher", "Generation", "SynthItem", "Teacher", "TeacherOutput", "make_teacher"]
