"""Generate the synthetic benchmark directory: config, per-problem generation, files, manifest.

Problem k goes to the k-th selected family round-robin; its RNG is seeded from
"seed:family:index" (string seeds hash with SHA-512, so no PYTHONHASHSEED dependence), hence the
same config gives byte-identical `problems.jsonl` and PNGs. An image that repeats an earlier one
byte for byte is redrawn with the next attempt's RNG, so every problem has its own image and the
pid-hash split can never put one image in both splits.

    summary = make_bench(BenchConfig(out="runs/bench", n=1000))
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from casseat_edge.artifacts import (
    prepare_out_dir,
    sha256_file,
    stable_fraction,
    write_bytes_atomic,
    write_jsonl_atomic,
    write_manifest,
)
from casseat_edge.bench import charts, geometry, scenes, table  # noqa: F401  (registers)
from casseat_edge.bench.base import Draft, Family, registry
from casseat_edge.bench.render import Canvas
from casseat_edge.bench.trace import evaluate_trace, format_answer
from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError, DataError

SOURCE = "casseat-synthetic"
MAX_ATTEMPTS = 50
MAX_PROBLEMS = 1_000_000  # ~1 ms and ~5 KB a problem: past this, a typo, not a benchmark
FAMILIES: Mapping[str, Family] = MappingProxyType({k: registry()[k] for k in sorted(registry())})


@dataclasses.dataclass(frozen=True)
class BenchConfig(StageConfig):
    """Config of the `bench` stage: how many problems, of which families, where to write them."""

    out: str = option("bench", "output directory for problems.jsonl, images/ and casseat.json")
    n: int = option(
        1000, f"number of problems (1-{MAX_PROBLEMS:,}), spread round-robin over the families"
    )
    seed: int = option(0, "random seed; the same config gives byte-identical files")
    families: tuple[str, ...] = option(
        (), "families to generate (empty: all): " + ", ".join(FAMILIES)
    )
    image_size: int = option(336, "side of the square PNG images in pixels (64-1024)")
    test_fraction: float = option(0.2, "fraction of problems in the test split, by a hash of pid")
    overwrite: bool = option(False, "replace a non-empty output directory")

    def __post_init__(self) -> None:
        families = self.families
        if isinstance(families, str):
            families = tuple(f.strip() for f in families.split(",") if f.strip())
        object.__setattr__(self, "families", tuple(families))
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(
                f"--families: unknown family {unknown[0]!r}; valid: {', '.join(FAMILIES)}"
            )
        _check_int("--n", self.n, 1, MAX_PROBLEMS)
        _check_int("--seed", self.seed, None, None)
        _check_int("--image-size", self.image_size, 64, 1024)
        fraction = self.test_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ConfigError(f"--test-fraction: expected a number in [0, 1), found {fraction!r}")
        if not 0 <= fraction < 1:
            raise ConfigError(f"--test-fraction: expected 0 <= value < 1, found {fraction}")

    @property
    def selected(self) -> tuple[str, ...]:
        """Selected family names in canonical (sorted) order; flag order does not matter."""
        return tuple(f for f in FAMILIES if not self.families or f in self.families)


def _check_int(flag: str, value: Any, low: int | None, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag}: expected an integer, found {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        found = value if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise ConfigError(f"{flag}: expected an integer {bounds}, found {found}")


def schedule(config: BenchConfig) -> Iterator[tuple[str, int]]:
    """(family, per-family index) for each problem, round-robin over the selected families."""
    families = config.selected
    for k in range(config.n):
        yield families[k % len(families)], k // len(families)


def split_of(pid: str, seed: int, test_fraction: float) -> str:
    """'test' for a seeded-hash fraction of pids, else 'train'; stable as n grows."""
    return "test" if stable_fraction(f"{seed}:{pid}") < test_fraction else "train"


def build_problem(
    family: str, index: int, seed: int = 0, image_size: int = 336, attempt: int = 0
) -> tuple[dict[str, Any], bytes]:
    """One problem row (split not yet set) and its PNG bytes, fully determined by the arguments."""
    rng_key = f"{seed}:{family}:{index}" + (f":{attempt}" if attempt else "")
    rng = random.Random(rng_key)
    spec = FAMILIES[family]
    canvas = Canvas(image_size)
    draft = spec.build(rng, spec.task_for(index), canvas)
    pid = f"{family}-{index:05d}"
    row = _row(pid, family, draft, {"seed": seed, "rng_key": rng_key})
    return row, canvas.png()


def _row(pid: str, family: str, draft: Draft, seeds: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "pid": pid,
        "question": draft.question,
        "image": f"images/{pid}.png",
        "choices": draft.choices,
        "answer": None,
        "answer_type": draft.answer_type,
        "precision": draft.precision,
        "unit": draft.unit,
        "question_type": draft.question_type,
    }
    steps = draft.trace.steps
    row["answer"] = format_answer(evaluate_trace(steps), row)
    if draft.choices is not None and row["answer"] not in draft.choices:
        raise AssertionError(f"{pid}: answer {row['answer']!r} not among {draft.choices}")
    row["metadata"] = {
        "family": family,
        "task": draft.task,
        "split": None,
        "caption": draft.caption,
        "source": SOURCE,
        "trace": steps,
        **seeds,
    }
    return row


def unique_problem(
    family: str, index: int, config: BenchConfig, seen: set[bytes]
) -> tuple[dict[str, Any], bytes]:
    """`build_problem`, redrawn with the next attempt while its image repeats an earlier one."""
    for attempt in range(MAX_ATTEMPTS):
        row, png = build_problem(family, index, config.seed, config.image_size, attempt)
        digest = hashlib.sha256(png).digest()
        if digest not in seen:
            seen.add(digest)
            row["metadata"]["split"] = split_of(row["pid"], config.seed, config.test_fraction)
            return row, png
    raise DataError(
        f"{family}-{index:05d}: image: {MAX_ATTEMPTS} redraws all repeat earlier images; "
        "lower --n or select more --families"
    )


def count_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Problem counts per family, task, split and answer_type (sorted keys)."""
    keys = {
        "family": lambda r: r["metadata"]["family"],
        "task": lambda r: f"{r['metadata']['family']}/{r['metadata']['task']}",
        "split": lambda r: r["metadata"]["split"],
        "answer_type": lambda r: r["answer_type"],
    }
    return {name: dict(sorted(Counter(map(key, rows)).items())) for name, key in keys.items()}


def make_bench(
    config: BenchConfig, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Write problems.jsonl, images/<pid>.png and casseat.json under `config.out`; summarize."""
    started = time.perf_counter()
    out = prepare_out_dir(config.out, config.overwrite, kind="bench")
    # claims the directory for `--overwrite` if the run is killed; config None: not complete
    write_manifest(out, "bench", None, complete=False)
    rows: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    for done, (family, index) in enumerate(schedule(config), 1):
        row, png = unique_problem(family, index, config, seen)
        write_bytes_atomic(out / row["image"], png)
        rows.append(row)
        if progress is not None:
            progress(done)
    problems = out / "problems.jsonl"
    write_jsonl_atomic(problems, rows)
    counts = count_rows(rows)
    seconds = round(time.perf_counter() - started, 3)
    write_manifest(
        out,
        "bench",
        config.to_dict(),
        n=len(rows),
        counts=counts,
        families=list(config.selected),
        files={"problems.jsonl": sha256_file(problems)},
        seconds=seconds,
        source=SOURCE,
    )
    return {"n": len(rows), "counts": counts, "seconds": seconds, "path": str(Path(out))}
