"""`casseat-edge train` under mimalloc (what the CLI does by default) vs glibc's malloc, in one run.

Both sides run the same command in their own process, `casseat-edge train --config C --max-steps
N --out <tmp> --json`, one with `CASSEAT_ALLOCATOR=system`: the same data, model, seed and steps.
The config is the main job's student recipe (`--run OUT` reads `OUT/student/casseat.json`, a
finished `casseat-edge pipeline --out OUT`) or any train config (`--config`). Per side: tokens/s
as `train` reports it, wall time, the child's peak RSS and minor page faults (getrusage of the
child, from wait4). The sides alternate `--repeats` times; each keeps its best
tokens/s. Prints a table, then one JSON line.

    python3 benchmarks/train_allocator.py --run runs/main --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIDES = {"mimalloc": "mimalloc", "glibc": "system"}


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.config) if args.config else Path(args.run) / "student" / "casseat.json"
    if not source.is_file():
        raise SystemExit(f"{source}: not found; pass --run OUT of a finished pipeline or --config")
    document = json.loads(source.read_text())
    return dict(document.get("config", document))


def run_side(side: str, config: dict[str, Any], args: argparse.Namespace, work: Path) -> dict:
    work.mkdir(parents=True)
    out = work / f"{side}-out"
    path = work / f"{side}.json"
    path.write_text(json.dumps({**config, "out": str(out), "max_steps": args.steps,
                                "logging_steps": 1, "save_steps": 0, "overwrite": True}))  # fmt: skip
    env = {**os.environ, "CASSEAT_ALLOCATOR": SIDES[side]}
    command = [sys.executable, "-m", "casseat_cli", "train", "--config", str(path), "--json"]
    start = time.perf_counter()
    with open(work / f"{side}.out", "w+") as stdout, open(work / f"{side}.err", "w+") as stderr:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        text, errors = stdout.read(), stderr.read()
    if code != 0:
        raise SystemExit(f"{side}: train failed (exit {code}):\n{errors[-3000:]}")
    summary = json.loads(text)
    if summary.get("allocator") != SIDES[side]:
        raise SystemExit(f"{side}: train ran on {summary.get('allocator')!r}; is mimalloc here?")
    row = {
        "tokens_per_s": summary["tokens_per_s"],
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "minor_faults": usage.ru_minflt,
        "system_s": round(usage.ru_stime, 1),
        "final_loss": summary.get("final_loss"),
    }
    print(f"[train_allocator] {side}: {row}", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/main", help="a finished main job's --out")
    parser.add_argument("--config", help="a train config file instead of --run's student recipe")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per side")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the sides this often")
    args = parser.parse_args(argv)
    config = train_config(args)
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="train-allocator-") as tmp:
        for repeat in range(args.repeats):
            for side in SIDES:
                rows[side].append(run_side(side, config, args, Path(tmp) / f"{side}{repeat}"))
    best = {side: max(runs, key=lambda r: r["tokens_per_s"]) for side, runs in rows.items()}
    print(f"{'allocator':<10} {'tokens/s':>9} {'wall s':>7} {'peak RSS GiB':>13} "
          f"{'minor faults':>13} {'system s':>9}")  # fmt: skip
    for side, row in best.items():
        print(f"{side:<10} {row['tokens_per_s']:>9.1f} {row['wall_s']:>7.1f} "
              f"{row['peak_rss_gib']:>13.2f} {row['minor_faults']:>13,} {row['system_s']:>9.1f}")  # fmt: skip
    ratio = best["mimalloc"]["tokens_per_s"] / best["glibc"]["tokens_per_s"]
    print(f"mimalloc / glibc tokens/s: {ratio:.2f}x ({args.steps} steps, best of {args.repeats})")
    print(json.dumps({"steps": args.steps, "repeats": args.repeats, "ratio": round(ratio, 3),
                      "sides": best}))  # fmt: skip


if __name__ == "__main__":
    main()
