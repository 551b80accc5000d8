"""Two evaluations of the same problems, compared problem by problem.

At n = 100 two accuracies a few points apart say little; which problems each run gets right says
more. For two `casseat-edge eval` directories (e.g. the f16 and q4_k_m exports of one student, or
two students) this prints, on the problems both answered: each run's accuracy, the problems A
gets right and B wrong ("lost") and the reverse ("gained"), a two-sided sign test on those, and
how many stage-1 texts are identical. `--stage1` scores stage 1's answer (a cas-seat run's cot,
as `runtime.evaluate.derive_cot` reads it) instead of the final one.

    python3 benchmarks/paired_eval.py runs/eval-f16 runs/eval-q4_k_m --stage1

Prints a line of text and one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casseat_edge.answers import is_correct  # noqa: E402
from casseat_edge.artifacts import read_jsonl, read_manifest  # noqa: E402
from casseat_edge.loaders import load_problems  # noqa: E402


def sign_test(lost: int, gained: int) -> float:
    """Two-sided exact sign test of `lost` vs `gained` discordant pairs."""
    n, k = lost + gained, min(lost, gained)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _rows(run: Path) -> dict[str, dict[str, Any]]:
    return {row["pid"]: row for _, row in read_jsonl(run / "results.jsonl")}


def _right(row: dict[str, Any], problems: dict[str, dict], stage1: bool) -> bool:
    if not stage1:
        return bool(row.get("correct"))
    stages = row.get("stages") or [{}]
    return is_correct(stages[0].get("answer"), problems[row["pid"]])


def compare(a: Path, b: Path, stage1: bool = False) -> dict[str, Any]:
    bench = read_manifest(a, "eval")["config"]["bench"]
    problems = {p["pid"]: p for p in load_problems(bench).rows}
    rows_a, rows_b = _rows(a), _rows(b)
    common = [pid for pid in rows_a if pid in rows_b]
    right_a = [_right(rows_a[p], problems, stage1) for p in common]
    right_b = [_right(rows_b[p], problems, stage1) for p in common]
    lost = sum(x and not y for x, y in zip(right_a, right_b, strict=True))
    gained = sum(y and not x for x, y in zip(right_a, right_b, strict=True))

    def text(row: dict[str, Any]) -> str | None:
        return (row.get("stages") or [{}])[0].get("text")

    same = sum(text(rows_a[p]) == text(rows_b[p]) for p in common)
    return {"a": str(a), "b": str(b), "scored": "stage1" if stage1 else "final",
            "n": len(common), "right_a": sum(right_a), "right_b": sum(right_b), "lost": lost,
            "gained": gained, "sign_test_p": round(sign_test(lost, gained), 4),
            "identical_stage1_texts": same}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the reference eval directory")
    parser.add_argument("b", type=Path, help="the eval directory compared with it")
    parser.add_argument("--stage1", action="store_true", help="score stage 1's answer (cot)")
    args = parser.parse_args()
    r = compare(args.a, args.b, args.stage1)
    print(f"{r['scored']}: n={r['n']} A={r['right_a']} B={r['right_b']} lost={r['lost']} "
          f"gained={r['gained']} sign test p={r['sign_test_p']} "
          f"identical stage-1 texts={r['identical_stage1_texts']}")  # fmt: skip
    print(json.dumps(r))


if __name__ == "__main__":
    main()
