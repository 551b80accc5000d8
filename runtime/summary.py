"""Summaries of evaluation results: `results.jsonl` rows (DESIGN.md) -> `summary.json`.

A results row: `pid, policy, backend, quant, answer, correct, verdict, stages [{name,
prompt_tokens, new_prefill_tokens, completion_tokens, encode_ms, prefill_ms, decode_ms, ttft_ms,
text}]`. The summary holds accuracy overall / by family / by answer type (re-scored with the
rule-based extractor), the verdict-vs-correctness confusion of self-evaluating policies, latency
p50/p90 per stage and in total, decode tokens/s, and whatever run facts the caller adds (peak RSS,
model bytes, backend, quant, policy).

    summary = summarize(rows, problems_by_pid, run={"backend": "llama.cpp", "quant": "q4_k_m"})
    check_summary(json.loads(path.read_text()), str(path))  # what a reader may rely on

`check_summary` is the contract readers (the report) rely on: a summary read back from disk that
breaks it is a `DataError` naming the file and the field, not a KeyError inside a plot.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from casseat_edge.answers import extract, is_correct
from casseat_edge.errors import DataError

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


def _speculation(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Speculative decoding's counts: draft tokens checked, kept, and the share kept."""
    stages = [s for r in rows for s in r.get("stages", [])]
    drafted = sum(int(s.get("drafted_tokens") or 0) for s in stages)
    if not drafted:
        return None
    accepted = sum(int(s.get("accepted_tokens") or 0) for s in stages)
    generated = sum(int(s.get("completion_tokens") or 0) for s in stages)
    return {
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance": round(accepted / drafted, 4),
        "accepted_share_of_generated": round(accepted / generated, 4) if generated else None,
    }


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
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "pid" in r for r in rows):
        raise TypeError("summarize: rows must be a list of result rows (dicts with a pid)")
    if not isinstance(problems, dict):
        raise TypeError(f"summarize: problems must be a dict, found {type(problems).__name__}")
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
        "speculative": _speculation(rows),
        "errors": sum(1 for r in rows if r.get("error")),
    }


# --- reading a summary back ----------------------------------------------------------------------

VERDICT_KEYS = tuple(
    f"{c}/{v}" for c in ("correct", "incorrect") for v in ("Accept", "Refine", "none")
)


def check_summary(summary: Any, where: str) -> None:
    """Raise `DataError("where: field: ...")` unless `summary` has what readers use: `n`,
    `correct`, `accuracy`, and, where present, the labels, latency percentiles, per-family
    accuracy and verdict counts with the types `summarize` writes."""
    _expect(summary, where, "summary", dict, "a JSON object (a run summary)")
    for key in ("n", "correct"):
        _expect(summary.get(key), where, key, _is_count, "a count (integer >= 0)")
    _expect(summary.get("accuracy"), where, "accuracy", _is_fraction, "a number in [0, 1]")
    for key in ("name", "model", "backend", "quant", "policy"):
        _expect(summary.get(key), where, key, _optional(str), "a string")
    for key in ("model_bytes", "decode_tokens_per_s"):
        _expect(summary.get(key), where, key, _optional(_is_number), "a number or null")
    _check_latency(summary.get("latency_ms"), where)
    families = summary.get("by_family")
    _expect(families, where, "by_family", _optional(dict), "an object")
    for family, row in (families or {}).items():
        field = f"by_family.{family}"
        _expect(row, where, field, dict, "an object")
        _expect(row.get("accuracy"), where, f"{field}.accuracy", _is_fraction, "a number in [0, 1]")
    _check_verdicts(summary.get("verdicts"), where)


def _check_latency(latency: Any, where: str) -> None:
    _expect(latency, where, "latency_ms", _optional(dict), "an object")
    latency = latency or {}
    _check_percentiles(latency.get("total_ms"), where, "latency_ms.total_ms")
    stages = latency.get("stages")
    _expect(stages, where, "latency_ms.stages", _optional(dict), "an object")
    for name, fields in (stages or {}).items():
        _expect(fields, where, f"latency_ms.stages.{name}", dict, "an object")
        for key, value in fields.items():
            _check_percentiles(value, where, f"latency_ms.stages.{name}.{key}")


def _check_percentiles(value: Any, where: str, field: str) -> None:
    _expect(value, where, field, _optional(dict), "an object")
    for key in ("p50", "p90"):
        _expect((value or {}).get(key), where, f"{field}.{key}", _optional(_is_number), "a number")


def _check_verdicts(verdicts: Any, where: str) -> None:
    _expect(verdicts, where, "verdicts", _optional(dict), "an object")
    if not verdicts:
        return
    counts = verdicts.get("counts")
    _expect(counts, where, "verdicts.counts", dict, f"an object with {', '.join(VERDICT_KEYS)}")
    for key in VERDICT_KEYS:
        _expect(counts.get(key), where, f"verdicts.counts.{key}", _is_count, "a count")
    accuracy = verdicts.get("self_eval_accuracy")
    _expect(accuracy, where, "verdicts.self_eval_accuracy", _optional(_is_fraction), "a number")


def _expect(value: Any, where: str, field: str, ok: Any, what: str) -> None:
    fits = isinstance(value, ok) if isinstance(ok, type) else ok(value)
    if not fits:
        found = "nothing (missing)" if value is None else f"{value!r:.40}"
        raise DataError(
            f"{where}: {field}: expected {what}, found {found}; re-run `casseat-edge eval` "
            "to rewrite it"
        )


def _optional(ok: Any) -> Any:
    return lambda v: v is None or (isinstance(v, ok) if isinstance(ok, type) else ok(v))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_fraction(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= 1
