"""`synthesize(config)`: problems -> source DDF -> teacher (appending one flushed line per problem to
`teacher_outputs.jsonl`) -> labeled DDF -> samples, mix and held-out split.

The teacher loop is the long, resumable part: a run killed at any point (even SIGKILL) continues
with `--resume`, skipping problems already in `teacher_outputs.jsonl` (a torn last line is cut
off). Everything after it is recomputed from that file, so a resumed run writes exactly what an
uninterrupted one would.

Output directory: `teacher_outputs.jsonl`, `samples.jsonl` (training), `heldout.jsonl`,
`rejected.jsonl`, `stats.json`, `images/` (the images the samples use), `casseat.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import (
    JsonlAppender,
    atomic_path,
    read_jsonl,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
    write_manifest,
)
from casseat_edge.errors import ConfigError, DataError
from casseat_edge.loaders import load_problems
from casseat_edge.prompts import prompt_info
from training.synth.config import SynthConfig
from training.synth.ddf import Rejection, label_output, source_filter
from training.synth.judge import apply_judge, read_judged, run_judge
from training.synth.mix import build_samples, held_out_group, mix
from training.synth.teachers import SynthItem, make_teacher

OUTPUTS = "teacher_outputs.jsonl"
RUN_FILE = "run.json"
RESUME_IGNORES = ("resume", "limit")

Progress = Callable[[int, int], None]


def synthesize(config: SynthConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the synthesis stage; returns the stats written to `stats.json`."""
    out = Path(config.out)
    problems = load_problems(config.problems, skip_invalid=config.skip_invalid)
    rows = _select_split(_check_not_empty(problems), config.split)
    fresh = _prepare(out, config)
    teacher = make_teacher(config.teacher, config)  # a bad teacher spec fails before --out exists
    try:
        kept, source_rejections = source_filter(
            rows, problems.root, config, not teacher.sees_images
        )
        _check_kept(problems.source, rows, kept, source_rejections)
        if fresh:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / RUN_FILE, run_settings(config))
        kept = kept[: config.limit] if config.limit else kept
        started = time.perf_counter()
        done_now = _run_teacher(teacher, kept, problems.root, out, config.mode, progress)
        elapsed = time.perf_counter() - started
    finally:
        teacher.close()
    return _finalize(out, config, kept, problems.root, source_rejections, done_now, elapsed)


def _check_not_empty(problems: Any) -> list[dict[str, Any]]:
    """The problem rows; a file without any (empty, or every row skipped) is an error."""
    if problems.rows:
        return problems.rows
    if problems.skipped:
        first = problems.skipped[0]
        raise DataError(
            f"{problems.source}: no valid problem: all {len(problems.skipped)} rows were skipped "
            f"(first: {first['reason']}); fix the rows, --skip-invalid only leaves bad ones out"
        )
    raise DataError(
        f"{problems.source}: no problems (the file has no rows); pass a problem set with rows, "
        "e.g. one written by `casseat-edge bench make --out DIR`"
    )


# what to change when a source filter removed every problem
FILTER_FIXES = {
    "family_not_allowed": "widen --families",
    "question_too_long": "raise --max-question-chars",
    "image_too_large": "raise --max-image-pixels",
    "no_caption": "add metadata.caption or use a teacher that sees images",
}


def _check_kept(
    source: str, rows: list[dict[str, Any]], kept: list[dict[str, Any]], rejected: list[Rejection]
) -> None:
    """Every problem removed before the teacher runs is an error naming the rules that did it."""
    if kept or not rows:
        return
    rules = Counter(r.rule for r in rejected)
    counts = ", ".join(f"{rule}: {n}" for rule, n in rules.most_common())
    fixes = [FILTER_FIXES.get(rule, "fix the problem rows") for rule in rules]
    raise DataError(
        f"{source}: the source filters removed all {len(rows)} problems ({counts}); "
        + "; ".join(dict.fromkeys(fixes))
    )


def _select_split(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Rows of `split`; rows without a split belong to every split. None left is an error."""
    if not split:
        return rows
    chosen = [r for r in rows if r["metadata"].get("split") in (None, split)]
    if rows and not chosen:
        found = sorted({str(r["metadata"].get("split")) for r in rows})
        raise ConfigError(
            f"--split {split}: no problem has that split (found: {', '.join(found)}); "
            "pass one of those, or --split '' for all"
        )
    return chosen


def _prepare(out: Path, config: SynthConfig) -> bool:
    """Check --out against --resume; True when a new run must be started there."""
    run_file = out / RUN_FILE
    if not (out.exists() and any(out.iterdir())):
        return True
    if not config.resume:
        raise ConfigError(
            f"{out} already exists and is not empty; pass --resume to continue it, "
            "or choose another --out"
        )
    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    if previous != run_settings(config):
        raise ConfigError(
            f"{out}: --resume needs the same settings as the interrupted run "
            f"(see {run_file}); start a new --out to change them"
        )
    return False


def run_settings(config: SynthConfig) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: the settings and the problems."""
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUME_IGNORES}
    return {**settings, "problems_sha256": _problems_hash(config.problems)}


def _run_teacher(
    teacher: Any,
    kept: list[dict[str, Any]],
    root: Path,
    out: Path,
    mode: str,
    progress: Progress | None,
) -> int:
    with JsonlAppender(out / OUTPUTS) as writer:  # cuts a torn last line before reading pids again
        # a problem whose last record is an error is tried again; the newest record wins later
        last = {row["pid"]: row for _, row in read_jsonl(out / OUTPUTS)}
        done = {pid for pid, row in last.items() if not row.get("error")}
        pending = [
            SynthItem(p, root / p["image"] if p.get("image") else None)
            for p in kept
            if p["pid"] not in done
        ]
        count = len(kept) - len(pending)
        if progress:
            progress(count, len(kept))
        for output in teacher.run(pending, mode):
            writer.write(output.to_dict())
            count += 1
            if progress:
                progress(count, len(kept))
    return len(pending)


def _finalize(
    out: Path,
    config: SynthConfig,
    kept: list[dict[str, Any]],
    root: Path,
    source_rejections: list[Rejection],
    done_now: int,
    elapsed: float,
) -> dict[str, Any]:
    by_pid = {p["pid"]: p for p in kept}
    outputs = {row["pid"]: row for _, row in read_jsonl(out / OUTPUTS) if row["pid"] in by_pid}
    labeled_all = {pid: label_output(output, by_pid[pid]) for pid, output in outputs.items()}
    if config.judge:
        image = {pid: root / p["image"] if p.get("image") else None for pid, p in by_pid.items()}
        run_judge(
            config,
            out,
            [
                (by_pid[pid], outputs[pid], image[pid])
                for pid, lab in labeled_all.items()
                if lab.eval
            ],
        )
        judged = read_judged(out)
        for labeled in labeled_all.values():
            apply_judge(labeled, judged)
    rejections = list(source_rejections)
    train, heldout = [], []
    for pid, output in outputs.items():
        problem = by_pid[pid]
        labeled = labeled_all[pid]
        rejections += labeled.rejections
        image_hash, image = _copy_image(problem, root, out)
        samples = build_samples(labeled, output, problem, config.teacher, image)
        split = held_out_group(image_hash, pid, config.seed, config.held_out)
        (heldout if split else train).extend(samples)
    mixed, dropped = mix(train, config.eval_fraction, config.seed)
    for sample in mixed:
        sample["split"] = "train"
    for sample in heldout:
        sample["split"] = "heldout"
    write_jsonl_atomic(out / "samples.jsonl", mixed)
    write_jsonl_atomic(out / "heldout.jsonl", heldout)
    write_jsonl_atomic(out / "rejected.jsonl", [r.to_dict() for r in rejections])
    stats = _stats(config, outputs, mixed, heldout, rejections, dropped, done_now, elapsed)
    write_json_atomic(out / "stats.json", stats)
    write_manifest(
        out,
        "samples",
        config.to_dict(),
        {"problems": _problems_hash(config.problems)},
        counts=stats["samples"],
        teacher=config.teacher,
        **prompt_info(),
    )
    return stats


def _copy_image(problem: dict[str, Any], root: Path, out: Path) -> tuple[str | None, str | None]:
    """Put the problem's image into out/images (hard link when possible) named by content hash."""
    if not problem.get("image"):
        return None, None
    source = root / problem["image"]
    digest = sha256_file(source)
    rel = f"images/{digest[:16]}{source.suffix.lower()}"
    target = out / rel
    if not target.exists():  # the name is the content hash: an existing file is complete
        with atomic_path(target) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
    return digest, rel


def _stats(
    config: SynthConfig,
    outputs: dict[str, dict[str, Any]],
    mixed: list[dict[str, Any]],
    heldout: list[dict[str, Any]],
    rejections: list[Rejection],
    dropped: dict[str, int],
    done_now: int,
    elapsed: float,
) -> dict[str, Any]:
    n = len(outputs)
    kinds = Counter(s["kind"] for s in mixed)
    kept_before_mix = Counter(s["kind"] for s in mixed) + Counter(dropped)
    return {
        "teacher": config.teacher,
        "mode": config.mode,
        "problems": n,
        "teacher_errors": sum(1 for o in outputs.values() if o.get("error")),
        "samples": {
            "train": dict(kinds),
            "heldout": dict(Counter(s["kind"] for s in heldout)),
            "dropped_by_mix": dropped,
        },
        "keep_rate": {
            k: round((kept_before_mix[k] + _count(heldout, k)) / n, 4) if n else 0.0
            for k in ("cot", "eval", "seat")
        },
        "verdicts": dict(
            Counter(s["label"]["verdict"] for s in mixed + heldout if s["kind"] == "eval")
        ),
        "rejections": {
            level: dict(Counter(r.rule for r in rejections if r.level == level))
            for level in ("source", "labeled")
        },
        "throughput": _throughput(outputs.values(), done_now, elapsed),
        **prompt_info(),
    }


def _count(samples: list[dict[str, Any]], kind: str) -> int:
    return sum(1 for s in samples if s["kind"] == kind)


def _throughput(outputs: Any, done_now: int, elapsed: float) -> dict[str, float]:
    tokens = seconds = 0.0
    for output in outputs:
        for stage in output.get("stats", {}).values():
            if isinstance(stage, dict) and "completion_tokens" in stage:
                tokens += stage["completion_tokens"]
                seconds += stage["seconds"]
    return {
        "problems_per_s": round(done_now / elapsed, 2) if elapsed > 0 else 0.0,
        "run_seconds": round(elapsed, 2),
        "completion_tokens": int(tokens),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
    }


def _problems_hash(path: str) -> str:
    p = Path(path)
    file = p / "problems.jsonl" if p.is_dir() else p
    return sha256_file(file) if file.is_file() else hashlib.sha256(path.encode()).hexdigest()
