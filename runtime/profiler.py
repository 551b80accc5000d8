"""Latency profile of a cascade: per-stage p50/p90 over repeats (warm-ups excluded), tokens/s,
peak RSS and model bytes.

    report = profile(cascade, image, question, repeats=5, warmup=1, caption=...)
    report["stages"]["stage2"]["prefill_ms"]["p50"], report["peak_rss_mb"]

Each stage already carries its own split (preprocess, vision encode where separable, prefill
tokens + ms, decode tokens + ms, TTFT); this module only aggregates and adds process-level numbers.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import numpy as np

from runtime.types import Result, StageResult

TIMED = ("preprocess_ms", "encode_ms", "prefill_ms", "decode_ms", "ttft_ms")
COUNTED = ("prompt_tokens", "new_prefill_tokens", "completion_tokens")


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
        "mean": round(float(np.mean(values)), 3),
    }


def summarize_stages(results: list[Result]) -> dict[str, dict[str, Any]]:
    """Per stage name: p50/p90 of every timing, mean token counts and tokens/s."""
    by_name: dict[str, list[StageResult]] = {}
    for result in results:
        for stage in result.stages:
            by_name.setdefault(stage.name, []).append(stage)
    summary = {}
    for name, stages in by_name.items():
        row: dict[str, Any] = {"n": len(stages)}
        for field in TIMED:
            values = [getattr(s, field) for s in stages if getattr(s, field) is not None]
            row[field] = percentiles(values)
        for field in COUNTED:
            row[field] = round(float(np.mean([getattr(s, field) for s in stages])), 1)
        row["decode_tokens_per_s"] = _rate(stages, "completion_tokens", "decode_ms", offset=1)
        row["prefill_tokens_per_s"] = _rate(stages, "new_prefill_tokens", "prefill_ms")
        summary[name] = row
    return summary


def _rate(stages: list[StageResult], tokens: str, ms: str, offset: int = 0) -> float | None:
    """Aggregate tokens/s (total tokens over total time). Decode excludes the first token, which
    comes from the prefill's logits."""
    n = sum(max(getattr(s, tokens) - offset, 0) for s in stages)
    seconds = sum(getattr(s, ms) for s in stages) / 1e3
    return round(n / seconds, 2) if n and seconds > 0 else None


def profile(
    cascade: Any, image: Any, question: str, repeats: int = 3, warmup: int = 1, **fields: Any
) -> dict[str, Any]:
    """Solve the same problem `warmup + repeats` times; aggregate only the timed repeats."""
    for _ in range(warmup):
        cascade.solve(image, question, **fields)
    start = time.perf_counter()
    results = [cascade.solve(image, question, **fields) for _ in range(repeats)]
    wall = time.perf_counter() - start
    return {
        "backend": cascade.backend,
        "policy": cascade.policy,
        "model": cascade.engine.spec,
        "repeats": repeats,
        "warmup": warmup,
        "total_ms": percentiles([r.total_ms for r in results]),
        "wall_s": round(wall, 3),
        "stages": summarize_stages(results),
        "peak_rss_mb": peak_rss_mb(),
        "model_bytes": cascade.engine.model_bytes(),
        "last": results[-1].to_dict(),
    }


def process_stats(cascade: Any) -> dict[str, Any]:
    """Process-level numbers to attach to a single run: peak RSS and the model's bytes."""
    return {"peak_rss_mb": peak_rss_mb(), "model_bytes": cascade.engine.model_bytes()}


def latency_table(result: Result) -> str:
    """A fixed-width per-stage table (ms and tokens) for terminals."""
    header = (
        f"{'stage':<10}{'prompt':>7}{'new':>6}{'gen':>6}{'prep':>9}{'encode':>9}"
        f"{'prefill':>10}{'decode':>10}{'ttft':>9}{'tok/s':>8}"
    )
    lines = [header]
    for s in result.stages:
        encode = "-" if s.encode_ms is None else f"{s.encode_ms:.1f}"
        speed = "-" if s.decode_tokens_per_s is None else f"{s.decode_tokens_per_s:.1f}"
        lines.append(
            f"{s.name:<10}{s.prompt_tokens:>7}{s.new_prefill_tokens:>6}{s.completion_tokens:>6}"
            f"{s.preprocess_ms:>9.1f}{encode:>9}{s.prefill_ms:>10.1f}{s.decode_ms:>10.1f}"
            f"{s.ttft_ms:>9.1f}{speed:>8}"
        )
    lines.append(f"total {result.total_ms:.1f} ms")
    return "\n".join(lines)
