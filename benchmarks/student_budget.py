"""How the demo student's held-out accuracy grows with its training budget.

The main job trains the student for a short budget of the Cas-SEAT mix; this measures what a
larger budget buys, to say what the accuracy target would need. It reuses a finished
`casseat-edge pipeline` directory (its bench, the mix data, the student's starting point: the
warm-up model under `student.work/` or, without a warm-up, the untrained preset, and `student/`
for its recipe and processor files), trains the mix phase again with the same recipe for
`--steps` steps with a checkpoint every `--every` steps (LoRA checkpoints are merged into the
starting point), and evaluates
every checkpoint on the held-out split with `cot` and `cas-seat` (greedy, captions as trained; on
torch fp32, or `--backend llama.cpp` on an f16 GGUF export of each checkpoint, about 5x faster).
`--skip-train` evaluates the checkpoints an earlier run of this script left. The checkpoints are points on one run's linear-decay schedule, so an early one has seen
a higher learning rate than a run that stops there; the last point is a whole run of that budget.

    casseat-edge pipeline --out runs/main
    python3 benchmarks/student_budget.py --run runs/main --steps 1500 --every 250 --limit 50

Prints a table and one JSON document, and writes `budget.json` and `budget.png` into `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/runtime.py is named like the package measured here: keep this folder off the path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from casseat_edge.artifacts import read_manifest, write_json_atomic  # noqa: E402
from runtime.evaluate import EvalConfig, evaluate  # noqa: E402
from training.sft import train  # noqa: E402
from training.sft.student import StudentConfig, phase_config  # noqa: E402

WEIGHTS = "model.safetensors"
POLICIES = ("cot", "cas-seat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished `casseat-edge pipeline` --out")
    parser.add_argument("--out", default="", help="work and result directory (default RUN/budget)")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps of the long run")
    parser.add_argument("--every", type=int, default=250, help="checkpoint every this many steps")
    parser.add_argument("--limit", type=int, default=50, help="held-out problems per evaluation")
    parser.add_argument("--max-new-tokens", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--backend", choices=("torch", "llama.cpp"), default="torch")
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing checkpoints")
    args = parser.parse_args()
    run = Path(args.run)
    out = Path(args.out or run / "budget")
    student = run / "student"
    settings = read_manifest(student)["student"]["config"]
    config = StudentConfig(**{**settings, "steps": args.steps, "threads": args.threads})
    work = run / "student.work"
    data = work / "mix-data" if (work / "mix-data").is_dir() else Path(config.data[0])
    start = str(work / "warmup") if config.warmup_steps else config.base
    sft = dataclasses.replace(
        phase_config(config, data, start, out / "model", warmup=False),
        save_steps=args.every,
        save_total_limit=0,
    )
    points = [*range(args.every, args.steps, args.every), args.steps]
    marks = {} if args.skip_train else train_marks(sft, points, args.steps)
    rows = []
    for step in points:
        model = checkpoint_model(out, student, step, args.steps, start)
        if args.backend == "llama.cpp":
            model = gguf_model(model, out / "gguf" / f"step-{step}")
        row: dict[str, Any] = {"steps": step, "train_seconds": marks.get(step)}
        for policy in POLICIES:
            shutil.rmtree(out / "eval" / f"{step}-{policy}", ignore_errors=True)
            summary = evaluate(
                EvalConfig(
                    model=str(model),
                    backend=args.backend,
                    bench=str(run / "bench"),
                    out=str(out / "eval" / f"{step}-{policy}"),
                    policy=policy,
                    limit=args.limit,
                    max_new_tokens=args.max_new_tokens,
                    captions="on",
                    threads=args.threads,
                )
            )
            row[policy] = summary["accuracy"]
            if policy == "cas-seat":
                row["self_eval_accuracy"] = (summary.get("verdicts") or {}).get(
                    "self_eval_accuracy"
                )
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    report(rows, out, args)


def train_marks(sft: Any, points: list[int], total: int) -> dict[int, float]:
    """Train, checkpointing at `points`; the seconds at which each was reached (where the
    progress callback, called at logging steps, saw it)."""
    marks: dict[int, float] = {}
    start = time.perf_counter()

    def progress(step: int, _total: int) -> None:
        if step in points:
            marks[step] = round(time.perf_counter() - start, 1)

    print(f"training {total} steps (checkpoints at {points})", file=sys.stderr)
    train(sft, progress)
    return marks


def gguf_model(model: Path, out: Path) -> Path:
    """An f16 GGUF (+ mmproj) of `model`, unverified (the pipeline verifies the same exporter)."""
    import export  # noqa: F401  (registers the exporters)
    from casseat_edge.registry import EXPORTERS

    gguf = EXPORTERS.get("gguf")
    config = gguf.config_class(model=str(model), out=str(out), quant="f16", verify=False)
    summary = gguf.export(dataclasses.replace(config, overwrite=True))
    return out / next(f["file"] for f in summary["files"] if f.get("role", "text") == "text")


def checkpoint_model(out: Path, student: Path, step: int, total: int, start: str) -> Path:
    """An HF model directory for the checkpoint at `step`: the student's files, these weights
    (a LoRA checkpoint's adapter merged into the starting point `start`)."""
    if step == total:
        return out / "model"
    target = out / "points" / f"step-{step}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(student, target, ignore=shutil.ignore_patterns(WEIGHTS, "*.png", "*.json.tmp"))
    checkpoint = out / "model" / "checkpoints" / f"checkpoint-{step}"
    if (checkpoint / WEIGHTS).is_file():
        shutil.copy2(checkpoint / WEIGHTS, target / WEIGHTS)
        return target
    from peft import PeftModel

    from casseat_edge.models import load_model

    base = load_model(start).model
    merged = PeftModel.from_pretrained(base, checkpoint).merge_and_unload()
    merged.save_pretrained(target, safe_serialization=True)
    return target


def report(rows: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> None:
    doc = {
        "steps": args.steps,
        "every": args.every,
        "limit": args.limit,
        "backend": args.backend,
        "points": rows,
    }
    write_json_atomic(out / "budget.json", doc)
    plot(rows, out / "budget.png")
    print(f"{'steps':>6} {'train s':>8} {'cot':>6} {'cas-seat':>9} {'self-eval':>10}")
    for r in rows:
        self_eval = r.get("self_eval_accuracy")
        seconds = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        print(
            f"{r['steps']:>6} {seconds:>8} {r['cot']:>6.3f} {r['cas-seat']:>9.3f} "
            f"{'' if self_eval is None else f'{self_eval:.3f}':>10}"
        )
    print(json.dumps(doc))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["steps"] for r in rows]
    for policy in POLICIES:
        ax.plot(steps, [r[policy] for r in rows], marker="o", label=policy)
    ax.set_xlabel("optimizer steps on the Cas-SEAT mix (batch 8)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Student: accuracy vs training budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
