"""A deterministic synthetic visual-math benchmark: problems that need the image to be answered.

Nine families (bar charts, line plots, tables, clocks, triangles, rectangles, circles, coloured
shapes, number lines) are drawn with PIL and written in the problem format of
`casseat_edge.problems`, each row with an exact scene caption and a re-executable solution trace
(`metadata.trace`) from which its answer is derived:

    from casseat_edge.bench import BenchConfig, make_bench, evaluate_trace, format_answer
    summary = make_bench(BenchConfig(out="runs/bench", n=1000, seed=0))
    # a procedural teacher: misread step 0 and recompute the answer it leads to
    wrong = format_answer(evaluate_trace(row["metadata"]["trace"], {0: 9}), row)
"""

from __future__ import annotations

from casseat_edge.bench.base import Draft, Family
from casseat_edge.bench.generate import (
    FAMILIES,
    SOURCE,
    BenchConfig,
    build_problem,
    make_bench,
    split_of,
)
from casseat_edge.bench.trace import OPS, TraceBuilder, evaluate_trace, format_answer

__all__ = [
    "FAMILIES",
    "OPS",
    "SOURCE",
    "BenchConfig",
    "Draft",
    "Family",
    "TraceBuilder",
    "build_problem",
    "evaluate_trace",
    "format_answer",
    "make_bench",
    "split_of",
]
