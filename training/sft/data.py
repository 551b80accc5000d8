"""Training samples -> token ids and loss masks, through the one preprocessing path.

Each sample (a row of `samples.jsonl` from `casseat-edge synth`) is rendered with the model's own
chat template by `casseat_edge.preprocess.encode` (text-only models read the image caption; with
`captions`, vision models read it too, after the image: `casseat_edge.preprocess.add_caption`). The
loss covers only the assistant turns to be learned: the reply of a `cot` or `seat` sample, and only
the final turn (the stage-2 review) of an `eval` sample, whose stage-1 reply may be the wrong
solution under review (with `learn_stage1`, that reply too where its label says it is right).
Each turn's span is found exactly: the conversation prefix before the turn
(with the generation prompt) and the prefix through the turn are encoded by the same path, and
their token counts bound the span; its end is the end-of-turn token (`<|im_end|>`), so the model
learns to stop. A sample longer than `max_length` is never truncated (that would cut image-token
spans): it is an error naming the sample, or skipped and counted.

    samples = load_samples("synth")
    dataset = SFTDataset(samples, loaded.processor, loaded.arch, max_length=2048)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from casseat_edge.artifacts import read_jsonl
from casseat_edge.errors import CasseatError, DataError
from casseat_edge.preprocess import (
    add_caption,
    count_images,
    encode,
    image_inside,
    load_image,
    processor_tokenizer,
)

IGNORE_INDEX = -100
SAMPLES_FILE = "samples.jsonl"
KINDS = ("cot", "eval", "seat")


@dataclasses.dataclass
class Sample:
    """One training conversation with its image (resolved inside the samples directory)."""

    id: str
    kind: str
    messages: list[dict[str, Any]]
    image: Path | None
    caption: str | None
    stage1_correct: bool = False  # an eval sample whose solution under review is right


def samples_file(data: str | Path) -> Path:
    """`samples.jsonl` in a samples directory (or the file itself)."""
    path = Path(data)
    found = path / SAMPLES_FILE if path.is_dir() else path
    if not found.is_file():
        raise DataError(f"{found}: not found; pass the directory `casseat-edge synth` wrote")
    return found


def load_samples(data: str | Path, limit: int = 0) -> list[Sample]:
    """Read and validate the samples file; images must stay inside its directory."""
    path = samples_file(data)
    root = path.parent.resolve()
    samples = []
    for lineno, row in read_jsonl(path):
        samples.append(_sample(row, root, f"{path}:{lineno}"))
        if limit and len(samples) >= limit:
            break
    if not samples:
        raise DataError(
            f"{path}: no samples (see stats.json and rejected.jsonl beside it for why synthesis "
            "kept none); synthesize more problems, or with another teacher, and train on that"
        )
    return samples


def _sample(row: dict[str, Any], root: Path, where: str) -> Sample:
    for key in ("id", "kind", "messages"):
        if key not in row:
            raise DataError(f"{where}: {key}: missing; expected a sample from `casseat-edge synth`")
    if row["kind"] not in KINDS:
        raise DataError(f"{where}: kind: {row['kind']!r} is not one of {', '.join(KINDS)}")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
        raise DataError(f"{where}: messages: expected a chat ending with an assistant turn")
    image = image_inside(root, row.get("image"), where) if count_images(messages) else None
    label = row.get("label") if isinstance(row.get("label"), dict) else {}
    right = label.get("stage1_correct") is True
    return Sample(str(row["id"]), row["kind"], messages, image, row.get("caption"), right)


def learned_turns(sample: Sample, learn_stage1: bool = False) -> list[int]:
    """Indices of the assistant messages the loss covers (see the module docstring)."""
    assistant = [i for i, m in enumerate(sample.messages) if m["role"] == "assistant"]
    if sample.kind == "eval":
        right = learn_stage1 and sample.stage1_correct and len(assistant) > 1
        return assistant[:1] + assistant[-1:] if right else assistant[-1:]
    if len(assistant) != 1:
        raise DataError(
            f"sample {sample.id}: a {sample.kind} sample has {len(assistant)} assistant turns; "
            "expected exactly one"
        )
    return assistant


class SFTDataset(torch.utils.data.Dataset):
    """Encoded samples: ids and labels are computed up front (lengths checked), pixels on access."""

    def __init__(
        self,
        samples: list[Sample],
        processor: Any,
        arch: Any,
        max_length: int,
        skip_long: bool = False,
        captions: bool = False,
        learn_stage1: bool = False,
    ) -> None:
        self.processor, self.arch = processor, arch
        self.learn_stage1 = learn_stage1
        self.captions = captions and bool(arch.vision)  # text-only models read captions anyway
        self.tokenizer = processor_tokenizer(processor)
        self.samples: list[Sample] = []
        self.labels: list[list[int]] = []
        self.input_ids: list[list[int]] = []
        self.skipped: list[str] = []
        for sample in samples:
            self._add(sample, max_length, skip_long)
        if not self.samples:
            raise DataError(
                f"all {len(samples)} samples are longer than --max-length {max_length}; raise it"
            )

    def _add(self, sample: Sample, max_length: int, skip_long: bool) -> None:
        ids = self.encode(sample)["input_ids"][0].tolist()
        if len(ids) > max_length:
            if skip_long:
                self.skipped.append(sample.id)
                return
            raise DataError(
                f"sample {sample.id}: {len(ids)} tokens > --max-length {max_length}; raise "
                "--max-length or pass --skip-long (samples are never truncated: image tokens)"
            )
        self.samples.append(sample)
        self.input_ids.append(ids)
        self.labels.append(self.mask(sample, ids))

    def encode(self, sample: Sample, upto: int | None = None, generation: bool = False) -> dict:
        """The sample's first `upto` messages (all by default) through the preprocessing path."""
        messages = sample.messages if upto is None else sample.messages[:upto]
        image = load_image(sample.image) if sample.image and count_images(messages) else None
        try:
            if self.captions:
                messages = add_caption(messages, sample.caption)
            return encode(self.processor, self.arch, messages, image, sample.caption, generation)
        except DataError as exc:
            raise DataError(f"sample {sample.id}: {exc}") from None

    def mask(self, sample: Sample, ids: list[int]) -> list[int]:
        """Labels: the ids inside learned assistant spans, IGNORE_INDEX everywhere else."""
        labels = [IGNORE_INDEX] * len(ids)
        for turn in learned_turns(sample, self.learn_stage1):
            start, end = self.span(sample, turn, ids)
            labels[start:end] = ids[start:end]
        return labels

    def span(self, sample: Sample, turn: int, ids: list[int]) -> tuple[int, int]:
        """[start, end) of assistant message `turn` in `ids`, through its end-of-turn token."""
        start = self._prefix_length(sample, turn, True, ids)
        end = self._prefix_length(sample, turn + 1, False, ids)
        while end > start and not self.tokenizer.decode(ids[end - 1 : end]).strip():
            end -= 1  # the newline after the end-of-turn token is template layout, not output
        if end <= start:
            raise DataError(f"sample {sample.id}: assistant turn {turn} is empty")
        return start, end

    def _prefix_length(self, sample: Sample, upto: int, generation: bool, ids: list[int]) -> int:
        prefix = self.encode(sample, upto, generation)["input_ids"][0].tolist()
        if ids[: len(prefix)] != prefix:
            raise CasseatError(
                f"sample {sample.id}: the chat template renders the first {upto} messages "
                "differently inside the full conversation; cannot locate the assistant turns"
            )
        return len(prefix)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        features = self.encode(self.samples[index])
        ids = features["input_ids"][0]
        if ids.tolist() != self.input_ids[index]:
            raise CasseatError(f"sample {self.samples[index].id}: encoding is not deterministic")
        features["labels"] = torch.tensor([self.labels[index]], dtype=ids.dtype)
        return features

    def n_label_tokens(self) -> int:
        return sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in self.labels)
