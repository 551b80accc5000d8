"""Summaries of evaluation results: `results.jsonl` rows (DESIGN.md) -> `summary.json`.

A results row: `pid, policy, backend, quant, answer, correct, verdict, stages [{name,
prompt_tokens, new_prefill_tokens, completion_tokens, encode_ms, prefill_ms, decode_ms, ttft_ms,
text}]`. The summary holds accuracy overall / by family / by answer type (re-scored with the
rule-based extractor), the verdict-vs-correctness confusion of self-evaluating policies, latency
p50/p90 per stage and in total, decode tokens/s, and whatever run facts the caller adds (peak RSS,
model bytes, backend, quant, policy).

    summary = summarize(rows, problems_by_pid, run={"backend": "llama.cpp", "quant": "q4_k_m"})
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from casseat_edge.answers import extract, is_correct

LATENCY_FIELDS = ("preprocess_ms", "encode_ms", "prefill_ms", "decode_ms", "ttft_ms")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "n": 0}
    array = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(array, 50)), 3),
        "p90": round(float(np.percentile(array, 90)), 3),
        "n": len(values),
    }


def stage_total_ms(stage: dict[str, Any]) -> float:
    parts = ("preprocess_ms", "encode_ms", "prefill_ms", "decode_ms")
    return sum(float(stage.get(k) or 0.0) for k in parts)


def _accuracy(pairs: list[tuple[str, bool]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for key, ok in pairs:
        groups[key].append(ok)
    return {
        k: {"n": len(v), "correct": sum(v), "accuracy": round(sum(v) / len(v), 4)}
        for k, v in sorted(groups.items())
    }


def _latency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_stage: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    totals = []
    for row in rows:
        for stage in row.get("stages", []):
            for key in LATENCY_FIELDS:
                if stage.get(key) is not None:
                    per_stage[stage["name"]][key].append(float(stage[key]))
            per_stage[stage["name"]]["total_ms"].append(stage_total_ms(stage))
        totals.append(sum(stage_total_ms(s) for s in row.get("stages", [])))
    stages = {
        name: {k: percentiles(v) for k, v in fields.items()} for name, fields in per_stage.items()
    }
    return {"stages": stages, "total_ms": percentiles(totals)}


def _tokens_per_s(rows: list[dict[str, Any]]) -> float | None:
    tokens = sum(int(s.get("completion_tokens") or 0) for r in rows for s in r.get("stages", []))
    seconds = sum(float(s.get("decode_ms") or 0) for r in rows for s in r.get("stages", [])) / 1000
    return round(tokens / seconds, 2) if seconds > 0 else None


def verdict_confusion(
    rows: list[dict[str, Any]], problems: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Stage-1 correctness x stage-2 verdict, for rows with a verdict: how well the model judges
    itself (Accept a right answer, Refine a wrong one)."""
    counts = {f"{c}/{v}": 0 for c in ("correct", "incorrect") for v in ("Accept", "Refine", "none")}
    for row in rows:
        stages = row.get("stages", [])
        if not stages or row.get("policy") in ("direct", "cot", "seat"):
            continue
        problem = problems.get(row["pid"])
        if problem is None:
            continue
        first = is_correct(extract(stages[0].get("text") or "", problem), problem)
        verdict = row.get("verdict") or "none"
        counts[f"{'correct' if first else 'incorrect'}/{verdict}"] += 1
    judged = counts["correct/Accept"] + counts["incorrect/Refine"]
    decided = sum(v for k, v in counts.items() if not k.endswith("/none"))
    return {"counts": counts, "self_eval_accuracy": round(judged / decided, 4) if decided else None}


def summarize(
    rows: list[dict[str, Any]],
    problems: dict[str, dict[str, Any]],
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of one run (one model x backend x quant x policy)."""
    scored = []
    for row in rows:
        problem = problems.get(row["pid"])
        if problem is not None:
            scored.append((row, problem, is_correct(row.get("answer"), problem)))
    n, correct = len(scored), sum(ok for _, _, ok in scored)
    return {
        **(run or {}),
        "method": "rule-extracted",
        "n": n,
        "correct": correct,
        "accuracy": round(correct / n, 4) if n else 0.0,
        "by_family": _accuracy(
            [(p["metadata"].get("family", "unknown"), ok) for _, p, ok in scored]
        ),
        "by_answer_type": _accuracy([(p["answer_type"], ok) for _, p, ok in scored]),
        "verdicts": verdict_confusion(rows, problems),
        "latency_ms": _latency(rows),
        "decode_tokens_per_s": _tokens_per_s(rows),
        "errors": sum(1 for r in rows if r.get("error")),
    }
