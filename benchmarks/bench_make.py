"""How fast `bench make` renders, against the floor of just encoding and writing the same PNGs.

Prints a table and one JSON line: problems/s of `make_bench`, and the ratio of its time to the time
PIL needs to encode and write the same images it produced (measured in the same run), i.e. how much
the drawing, tracing and bookkeeping cost on top of unavoidable PNG I/O.

    python3 benchmarks/bench_make.py --n 1000
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from casseat_edge.bench import BenchConfig, make_bench


def encode_floor(images: list[Path], out: Path) -> float:
    decoded = [Image.open(p).copy() for p in images]
    start = time.perf_counter()
    for i, image in enumerate(decoded):
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=3)
        (out / f"{i}.png").write_bytes(buf.getvalue())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_bench(BenchConfig(out=f"{tmp}/bench", n=args.n, seed=args.seed))
        ours = time.perf_counter() - start
        (Path(tmp) / "floor").mkdir()
        floor = encode_floor(sorted(Path(tmp, "bench", "images").glob("*.png")), Path(tmp, "floor"))
    row = {
        "n": args.n,
        "make_bench_s": round(ours, 2),
        "problems_per_s": round(args.n / ours, 1),
        "png_floor_s": round(floor, 2),
        "ratio_vs_png_floor": round(ours / floor, 2),
    }
    print(f"{'n':>6} {'make_bench s':>13} {'problems/s':>11} {'PNG floor s':>12} {'x floor':>8}")
    print(
        f"{row['n']:>6} {row['make_bench_s']:>13} {row['problems_per_s']:>11} "
        f"{row['png_floor_s']:>12} {row['ratio_vs_png_floor']:>8}"
    )
    print(json.dumps(row))


if __name__ == "__main__":
    main()
