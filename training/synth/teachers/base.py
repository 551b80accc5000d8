"""The teacher interface. A teacher turns problems into raw Cas-SEAT outputs: in `cas-seat` mode a
stage-1 solution and a stage-2 review of it (a separate short turn in the same conversation); in
`seat` mode one long response with inline self-evaluation blocks. Filtering and sample building
happen elsewhere (`training.synth.ddf`, `training.synth.mix`); teachers only generate.

Model-backed teachers subclass `ChatTeacher` and implement `generate` for a batch of
conversations; the cascade logic (stage 1, then stage 2 on top of it) is shared. Teachers are
registered in `casseat_edge.registry.TEACHERS` under the prefix of their spec (`llama.cpp:PATH`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from casseat_edge.prompts import (
    assistant,
    seat_messages,
    stage1_messages,
    stage2_messages,
)


@dataclasses.dataclass
class SynthItem:
    """One problem handed to a teacher: the problem row and its image's absolute path (or None)."""

    problem: dict[str, Any]
    image_path: Path | None

    @property
    def pid(self) -> str:
        return self.problem["pid"]

    @property
    def caption(self) -> str | None:
        return self.problem.get("metadata", {}).get("caption")


@dataclasses.dataclass
class Generation:
    """One generated reply with its token counts and time."""

    text: str
    prompt_tokens: int = 0
    new_prefill_tokens: int = 0  # prompt tokens actually evaluated (the rest came from a cache)
    completion_tokens: int = 0
    seconds: float = 0.0

    def stats(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "text"}


@dataclasses.dataclass
class TeacherOutput:
    """The raw record appended to `teacher_outputs.jsonl` for one problem."""

    pid: str
    mode: str
    stage1: str | None = None
    stage2: str | None = None
    seat: str | None = None
    error: str | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Teacher:
    """Base of all teachers. `spec` is the full teacher spec the user gave."""

    prefix: ClassVar[str]  # the spec prefix it is registered under, e.g. "llama.cpp"
    sees_images: bool = False  # False: the problem's caption replaces the image

    def __init__(self, spec: str, argument: str, config: Any) -> None:
        self.spec = spec
        self.argument = argument
        self.config = config

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"spec": getattr(cls, "spec_help", cls.prefix)}

    def run(self, items: list[SynthItem], mode: str) -> Iterator[TeacherOutput]:
        """Yield one output per item (in any order); an error on one item is put in its output."""
        raise NotImplementedError

    def close(self) -> None:
        """Release models, processes or connections."""


class ChatTeacher(Teacher):
    """A teacher backed by a chat model: the cascade is two `generate` calls per batch."""

    batch_size: int = 1

    def generate(
        self, conversations: list[list[dict[str, Any]]], items: list[SynthItem]
    ) -> list[Generation]:
        """One reply per conversation. Image parts refer to the item's image (or its caption)."""
        raise NotImplementedError

    def run(self, items: list[SynthItem], mode: str) -> Iterator[TeacherOutput]:
        for batch in _batches(items, self.batch_size):
            try:
                yield from self._run_batch(batch, mode)
            except Exception as exc:  # noqa: BLE001 - a failing batch is recorded, the run goes on
                if len(batch) == 1:
                    yield TeacherOutput(batch[0].pid, mode, error=_error_text(exc))
                else:  # retry one by one so a single bad problem does not sink its batch
                    for item in batch:
                        yield from self.run([item], mode)

    def _run_batch(self, batch: list[SynthItem], mode: str) -> Iterator[TeacherOutput]:
        start = time.perf_counter()
        if mode == "seat":
            replies = self.generate([seat_messages(i.problem) for i in batch], batch)
            for item, reply in zip(batch, replies):
                yield TeacherOutput(item.pid, mode, seat=reply.text, stats={"seat": reply.stats()})
            return
        first = [stage1_messages(i.problem) for i in batch]
        stage1 = self.generate(first, batch)
        second = [m + [assistant(r.text)] + stage2_messages() for m, r in zip(first, stage1)]
        stage2 = self.generate(second, batch)
        elapsed = time.perf_counter() - start
        for item, r1, r2 in zip(batch, stage1, stage2):
            stats = {"stage1": r1.stats(), "stage2": r2.stats(), "batch_seconds": elapsed}
            yield TeacherOutput(item.pid, mode, stage1=r1.text, stage2=r2.text, stats=stats)


def _batches(items: list[SynthItem], size: int) -> Iterable[list[SynthItem]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + max(1, size)]


def _error_text(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
