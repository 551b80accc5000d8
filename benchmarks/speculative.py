"""Speculative decoding (n-gram drafts, `--draft-tokens`) against one token per pass, in one run.

Evaluates one model on the same held-out problems twice with `casseat-edge eval`'s library call,
`--draft-tokens 0` (the reference) and `--draft-tokens K`, alternating sides `--repeats` times
on fresh output directories, and prints per side the wall time, decode tokens/s (generated tokens
over decode time, the first token excluded as everywhere) and p50 latency, then what the drafts
changed: the ratio of wall times, how many problems' texts are identical, accuracy on each side
and the problems one side gets right that the other does not. Greedy decoding keeps only draft
tokens it would have chosen itself, but a draft is checked in a batch, whose arithmetic can differ
from one token's in the last bits, so a near tie can fall the other way: that is what the
identical-text count measures.

    python3 benchmarks/speculative.py --model runs/main/export/gguf-q8_0/model-q8_0.gguf \\
        --bench runs/main/bench --backend llama.cpp --limit 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# benchmarks/runtime.py is named like the runtime package: keep this folder off the import path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from casseat_edge.artifacts import read_jsonl  # noqa: E402
from runtime.evaluate import EvalConfig, evaluate  # noqa: E402


def run_side(args: argparse.Namespace, draft: int, out: Path) -> dict[str, Any]:
    config = EvalConfig(model=args.model, bench=args.bench, backend=args.backend,
                        policy=args.policy, limit=args.limit, max_new_tokens=args.max_new_tokens,
                        quant=args.quant, captions=args.captions, draft_tokens=draft,
                        out=str(out))  # fmt: skip
    print(f"[speculative] --draft-tokens {draft}: {args.limit} problems", file=sys.stderr)
    start = time.perf_counter()
    summary = evaluate(config)
    wall = time.perf_counter() - start
    rows = {r["pid"]: r for _, r in read_jsonl(out / "results.jsonl")}
    return {"wall_s": round(wall, 1), "summary": summary, "rows": rows}


def compare(runs: dict[int, dict[str, Any]], draft: int) -> dict[str, Any]:
    plain, fast = runs[0], runs[draft]
    pids = sorted(set(plain["rows"]) & set(fast["rows"]))

    def texts(row: dict[str, Any]) -> list[str]:
        return [s["text"] for s in row.get("stages", [])]

    identical = sum(texts(plain["rows"][p]) == texts(fast["rows"][p]) for p in pids)
    lost = sum(bool(plain["rows"][p]["correct"]) and not fast["rows"][p]["correct"] for p in pids)
    gained = sum(bool(fast["rows"][p]["correct"]) and not plain["rows"][p]["correct"] for p in pids)
    return {"problems": len(pids), "identical_texts": identical, "lost": lost, "gained": gained,
            "wall_ratio": round(plain["wall_s"] / fast["wall_s"], 3)}  # fmt: skip


def side_row(run: dict[str, Any]) -> dict[str, Any]:
    summary = run["summary"]
    return {"wall_s": run["wall_s"], "accuracy": summary["accuracy"],
            "decode_tokens_per_s": summary["decode_tokens_per_s"],
            "p50_ms": summary["latency_ms"]["total_ms"]["p50"],
            "speculative": summary.get("speculative")}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model spec (a .gguf, an export dir, ...)")
    parser.add_argument("--bench", required=True, help="problem set (held-out split)")
    parser.add_argument("--backend", default="llama.cpp")
    parser.add_argument("--policy", default="cas-seat")
    parser.add_argument("--quant", default="", help="the export's variant (onnxruntime)")
    parser.add_argument("--captions", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--limit", type=int, default=30, help="held-out problems per side")
    parser.add_argument("--max-new-tokens", type=int, default=224)
    parser.add_argument("--draft-tokens", type=int, default=8, help="the speculative side's K")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the sides this often")
    args = parser.parse_args(argv)
    runs: dict[int, list[dict[str, Any]]] = {0: [], args.draft_tokens: []}
    with tempfile.TemporaryDirectory(prefix="speculative-") as tmp:
        for repeat in range(args.repeats):
            for draft in runs:
                runs[draft].append(run_side(args, draft, Path(tmp) / f"d{draft}-{repeat}"))
    best = {draft: min(sides, key=lambda r: r["wall_s"]) for draft, sides in runs.items()}
    result = {"model": args.model, "backend": args.backend, "limit": args.limit,
              "draft_tokens": args.draft_tokens, "sides": {d: side_row(r) for d, r in best.items()},
              **compare(best, args.draft_tokens)}  # fmt: skip
    print(
        f"{'--draft-tokens':<15} {'wall s':>7} {'decode tok/s':>13} {'p50 ms':>9} {'accuracy':>9}"
    )
    for draft, row in result["sides"].items():
        print(f"{draft:<15} {row['wall_s']:>7.1f} {row['decode_tokens_per_s']:>13.1f} "
              f"{row['p50_ms']:>9.0f} {row['accuracy']:>9.3f}")  # fmt: skip
    print(f"wall time ratio (0 / {args.draft_tokens}): {result['wall_ratio']:.2f}x; identical "
          f"texts {result['identical_texts']} / {result['problems']}; drafts lost "
          f"{result['lost']}, gained {result['gained']} problems")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
