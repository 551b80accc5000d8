"""The latency/accuracy tradeoff report: run directories (each with `summary.json`) -> `report.html`
(self-contained, plots embedded), `tradeoff.png`, `stage_latency.png`, `accuracy_by_family.png`,
`verdicts.png`, `report.md` and `report.json`.

`tradeoff.png` puts every run (backend x quant x policy) at (median latency, accuracy), marker area
proportional to model bytes, and draws the Pareto front: the runs no other run beats on both
latency and accuracy — the ones worth choosing between.

    report = write_report(["runs/llama-q4", "runs/ort-int8"], "report")
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import write_bytes_atomic, write_json_atomic
from casseat_edge.errors import DataError
from runtime.summary import check_summary

PLOTS = ("tradeoff", "stage_latency", "accuracy_by_family", "verdicts")


def load_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Each run's summary, labelled `backend/quant/policy` (plus the model when runs differ)."""
    if isinstance(run_dirs, (str, Path)):
        raise TypeError(f"run_dirs must be a list of run directories, found {run_dirs!r}")
    runs = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(
                f"{path}: not found; pass directories written by `casseat-edge eval`"
            ) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON ({exc.msg}); re-run the evaluation") from None
        except (UnicodeDecodeError, ValueError) as exc:  # not UTF-8; an int of > 4300 digits
            raise DataError(
                f"{path}: unreadable ({exc.__class__.__name__}); re-run the evaluation"
            ) from None
        check_summary(summary, str(path))
        runs.append({**summary, "dir": str(run_dir)})
    if not runs:
        raise DataError("no run directories given; pass one or more eval output directories")
    names = {_name(r) for r in runs}
    for run in runs:
        parts = [run.get("backend", "?"), run.get("quant", "?"), run.get("policy", "?")]
        run["label"] = "/".join(str(p) for p in ([_name(run)] if len(names) > 1 else []) + parts)
    return runs


def _name(run: dict[str, Any]) -> str:
    return run.get("name") or run.get("model") or "?"


def latency_p50(run: dict[str, Any]) -> float:
    return float((run.get("latency_ms", {}).get("total_ms") or {}).get("p50") or 0.0)


def pareto_front(runs: list[dict[str, Any]]) -> list[int]:
    """Indices of runs not dominated (another at most as slow and at least as accurate, one strictly)."""
    front = []
    for i, a in enumerate(runs):
        dominated = any(
            latency_p50(b) <= latency_p50(a)
            and b["accuracy"] >= a["accuracy"]
            and (latency_p50(b) < latency_p50(a) or b["accuracy"] > a["accuracy"])
            for j, b in enumerate(runs)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: latency_p50(runs[i]))


def _figure(width: float = 7.0, height: float = 4.5, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), dpi=110, squeeze=False)
    return plt, fig, axes[0] if ncols > 1 else axes[0][0]


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_tradeoff(runs: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs median latency. Runs cluster (one model, several backends), so each marker
    carries a number and the key beside the axes names it; colour is the backend, the shape the
    policy, a black ring marks the Pareto front."""
    plt, fig, ax = _figure(width=9.5)
    front = pareto_front(runs)
    order = sorted(range(len(runs)), key=lambda i: (latency_p50(runs[i]), -runs[i]["accuracy"]))
    number = {i: n + 1 for n, i in enumerate(order)}
    sizes = [max(float(r.get("model_bytes") or 0), 1.0) for r in runs]
    scale = 900 / max(sizes)
    colours = _palette(sorted({str(r.get("backend", "?")) for r in runs}))
    shapes = dict(zip(sorted({str(r.get("policy", "?")) for r in runs}), "osD^vP*X"))
    xmax = max(1.0, *(latency_p50(r) for r in runs))
    spots: dict[tuple[int, float], list[int]] = {}  # near-coincident runs share one label
    for i in order:
        run, x, y = runs[i], latency_p50(runs[i]), runs[i]["accuracy"] * 100
        ax.scatter(
            x,
            y,
            s=max(30, sizes[i] * scale),
            alpha=0.55,
            color=colours[str(run.get("backend", "?"))],
            marker=shapes[str(run.get("policy", "?"))],
            edgecolors="black" if i in front else "none",
            linewidths=1.5,
        )
        spots.setdefault((round(40 * x / xmax), round(y, 1)), []).append(i)
    for members in spots.values():
        first = runs[members[0]]
        ax.annotate(
            ",".join(str(number[i]) for i in members),
            (latency_p50(first), first["accuracy"] * 100),
            fontsize=7,
            xytext=(5, 5),
            textcoords="offset points",
        )
    ax.step(
        [latency_p50(runs[i]) for i in front],
        [runs[i]["accuracy"] * 100 for i in front],
        where="post",
        color="black",
        linewidth=1,
        label="Pareto front (ringed)",
    )
    for name, colour in colours.items():
        ax.scatter([], [], color=colour, alpha=0.55, label=name)
    for name, shape in shapes.items():
        ax.scatter([], [], color="grey", marker=shape, alpha=0.55, label=name)
    key = "\n".join(f"{number[i]:>2} {runs[i]['label']}" for i in order)
    ax.text(1.02, 1.0, key, transform=ax.transAxes, fontsize=7, family="monospace", va="top")
    ax.set(
        xlabel="median latency per problem (ms)",
        ylabel="accuracy (%, rule-extracted)",
        title="Accuracy vs latency (marker area = model bytes)",
    )
    ax.margins(x=0.15, y=0.15)
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def _palette(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def plot_stage_latency(runs: list[dict[str, Any]], path: Path) -> None:
    plt, fig, ax = _figure(width=max(7.0, 1.1 * len(runs)))
    stage_names = sorted({s for r in runs for s in r.get("latency_ms", {}).get("stages", {})})
    bottoms = [0.0] * len(runs)
    for name in stage_names:
        values = [
            ((r["latency_ms"]["stages"].get(name) or {}).get("total_ms") or {}).get("p50") or 0.0
            for r in runs
        ]
        ax.bar(range(len(runs)), values, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_xticks(range(len(runs)), [r["label"] for r in runs], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="median ms per problem", title="Latency per stage")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_accuracy_by_family(runs: list[dict[str, Any]], path: Path) -> None:
    families = sorted({f for r in runs for f in r.get("by_family", {})})
    plt, fig, ax = _figure(width=max(7.0, 0.8 * len(families) + 3))
    width = 0.8 / max(1, len(runs))
    for k, run in enumerate(runs):
        values = [run.get("by_family", {}).get(f, {}).get("accuracy", 0.0) * 100 for f in families]
        ax.bar(
            [i + k * width for i in range(len(families))], values, width=width, label=run["label"]
        )
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(families))],
        families,
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set(ylabel="accuracy (%)", title="Accuracy by problem family")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_verdicts(runs: list[dict[str, Any]], path: Path) -> None:
    """Stage-1 correctness x verdict per self-evaluating run: Accept on right, Refine on wrong."""
    judged = [r for r in runs if any((r.get("verdicts") or {}).get("counts", {}).values())]
    plt, fig, axes = _figure(
        width=max(4.0, 3.4 * max(1, len(judged))), height=3.4, ncols=max(1, len(judged))
    )
    axes = list(axes) if len(judged) > 1 else [axes]
    if not judged:
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "no self-evaluating (cas-seat) runs", ha="center")
    for ax, run in zip(axes, judged):
        counts = run["verdicts"]["counts"]
        matrix = [
            [counts[f"{c}/{v}"] for v in ("Accept", "Refine", "none")]
            for c in ("correct", "incorrect")
        ]
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center")
        ax.set_xticks(range(3), ["Accept", "Refine", "none"])
        ax.set_yticks(range(2), ["stage 1 right", "stage 1 wrong"])
        ax.set_title(run["label"], fontsize=8)
    _save(plt, fig, path)


def markdown_table(runs: list[dict[str, Any]]) -> str:
    front = set(pareto_front(runs))
    lines = [
        "| run | accuracy | p50 ms | p90 ms | decode tok/s | MB | self-eval acc | Pareto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        total = r.get("latency_ms", {}).get("total_ms") or {}
        mb = (r.get("model_bytes") or 0) / 1e6
        self_eval = (r.get("verdicts") or {}).get("self_eval_accuracy")
        lines.append(
            f"| {r['label']} | {r['accuracy']:.3f} ({r['correct']}/{r['n']}) | {total.get('p50')} | "
            f"{total.get('p90')} | {r.get('decode_tokens_per_s')} | {mb:.1f} | "
            f"{'' if self_eval is None else f'{self_eval:.3f}'} | {'yes' if i in front else ''} |"
        )
    return "\n".join(lines)


def write_report(
    run_dirs: list[str | Path], out: str | Path, sections: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write every report file into `out` and return the report document. `sections` are extra
    markdown tables (heading -> table) shown after the runs, e.g. the pipeline's export checks."""
    runs = load_runs(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    painters = {
        "tradeoff": plot_tradeoff,
        "stage_latency": plot_stage_latency,
        "accuracy_by_family": plot_accuracy_by_family,
        "verdicts": plot_verdicts,
    }
    for name, paint in painters.items():
        paint(runs, out / f"{name}.png")
    table = markdown_table(runs)
    document = {
        "runs": runs,
        "pareto_front": [runs[i]["label"] for i in pareto_front(runs)],
        "files": [f"{n}.png" for n in PLOTS] + ["report.html", "report.md"],
        "sections": sections or {},
    }
    write_json_atomic(out / "report.json", document)
    write_bytes_atomic(out / "report.md", _markdown(table, document).encode())
    write_bytes_atomic(out / "report.html", _html(table, document, out).encode())
    return document


def _markdown(table: str, document: dict[str, Any]) -> str:
    images = "\n".join(f"![{n}]({n}.png)" for n in PLOTS)
    front = ", ".join(document["pareto_front"])
    extra = "".join(f"## {h}\n\n{t}\n\n" for h, t in document["sections"].items())
    return f"# casseat-edge report\n\nPareto front: {front}\n\n{table}\n\n{extra}{images}\n"


def _html_table(table: str) -> str:
    rows = [line.strip("|").split("|") for line in table.splitlines()]
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
        for row in rows[2:]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(table: str, document: dict[str, Any], out: Path) -> str:
    extra = "".join(
        f"<h2>{html.escape(h)}</h2>{_html_table(t)}" for h, t in document["sections"].items()
    )
    images = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,'
        f'{base64.b64encode((out / f"{n}.png").read_bytes()).decode()}"><figcaption>{n}</figcaption></figure>'
        for n in PLOTS
    )
    front = html.escape(", ".join(document["pareto_front"]))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>casseat-edge report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}"
        "figure{margin:1.5em 0}</style></head><body><h1>casseat-edge: latency / accuracy</h1>"
        f"<p>Accuracy is rule-extracted. Pareto front: <b>{front}</b></p>"
        f"{_html_table(table)}{extra}{images}</body></html>"
    )
