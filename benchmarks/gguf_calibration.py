"""How close a calibrated GGUF stays to the f16 GGUF: llama.cpp's plain rounding vs `--imatrix` vs
`--gptq`, teacher-forced on held-out gold solutions, all measured in one run.

Exports the student (an HF directory the main job trained) as f16 (the reference) and as `--quant`
three ways: llama.cpp's own rounding, with an importance matrix computed from the synth
directory's training samples, and with GPTQ re-rounding from the same samples. Each variant then
reads the same held-out `cot` samples (`heldout.jsonl`: prompt with image and caption, then the
teacher's gold solution) through llama.cpp + libmtmd, and every solution position's next-token
distribution is compared with the f16 model's: mean KL(f16 || variant), top-1 agreement, and
the top-1 mismatches at positions whose gold token is a digit (the values a solution reads off
the image and computes, where one flipped token is a wrong answer).

    python3 benchmarks/gguf_calibration.py --student out/student --synth out/synth
    python3 benchmarks/gguf_calibration.py --student out/student --synth out/synth --quant q4_0

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export(student: str, out: Path, quant: str, **extra: object) -> dict:
    from casseat_edge.config import load_config
    from export.gguf import GgufExportConfig, export_gguf

    values = {"model": student, "out": str(out), "quant": quant, "verify": False, **extra}
    return export_gguf(load_config(GgufExportConfig, overrides=values))


def heldout_solutions(synth: Path, limit: int) -> list[dict]:
    from casseat_edge.artifacts import read_jsonl

    rows = [r for _, r in read_jsonl(synth / "heldout.jsonl") if r["kind"] == "cot"]
    if not rows:
        raise SystemExit(f"{synth / 'heldout.jsonl'}: no held-out cot samples")
    return rows[:limit]


def solution_logits(model: Path, rows: list[dict], synth: Path, captions: bool, threads: int):
    """Per row: the logits predicting each gold solution token, and which tokens are digits."""
    from casseat_edge.preprocess import add_caption
    from runtime.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(str(model), threads=threads or None)
    out = []
    try:
        for row in rows:
            prompt = row["messages"][:1]
            if captions:
                prompt = add_caption(prompt, row.get("caption"))
            encoded = engine.encode(prompt, str(synth / row["image"]), row.get("caption"))
            gold = engine.tokenize(row["messages"][1]["content"][0]["text"] + "<|im_end|>")
            engine.session.truncate(0)
            images = (encoded.extra or {}).get("images")
            logits = engine.session.eval(list(encoded.ids) + gold, 0, images, all_logits=True)
            digits = np.array([engine.detokenize([t]).strip().isdigit() for t in gold])
            out.append((logits[-len(gold) - 1 : -1].astype(np.float64), digits))
    finally:
        engine.close()
    return out


def compare(reference: list, variant: list) -> dict:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    kl, agree, digit = [], [], []
    for (ref, digits), (got, _) in zip(reference, variant):
        p, q = log_softmax(ref), log_softmax(got)
        kl.append((np.exp(p) * (p - q)).sum(-1))
        agree.append(ref.argmax(-1) == got.argmax(-1))
        digit.append(digits)
    kl, agree, digit = np.concatenate(kl), np.concatenate(agree), np.concatenate(digit)
    return {
        "positions": int(kl.size),
        "kl_mean": round(float(kl.mean()), 5),
        "kl_p99": round(float(np.quantile(kl, 0.99)), 4),
        "top1": round(float(agree.mean()), 4),
        "digit_positions": int(digit.sum()),
        "digit_mismatches": int((~agree[digit]).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="the trained student (HF directory)")
    parser.add_argument("--synth", required=True, help="its synth directory (samples, heldout)")
    parser.add_argument("--quant", default="q4_k_m", help="the quantized type to compare")
    parser.add_argument("--problems", type=int, default=60, help="held-out solutions compared")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: all)")
    args = parser.parse_args()

    from runtime.cascade import trained_with_captions

    synth = Path(args.synth).resolve()
    rows = heldout_solutions(synth, args.problems)
    captions = trained_with_captions(args.student)
    calibrate = {"calibration_samples": args.samples}
    variants = {
        "llama.cpp": {},
        "imatrix": {"imatrix": str(synth), **calibrate},
        "gptq": {"gptq": str(synth), **calibrate},
    }
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gguf-calibration-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        export(args.student, root / "f16", "f16")
        reference = solution_logits(
            root / "f16" / "model-f16.gguf", rows, synth, captions, args.threads
        )
        for name, extra in variants.items():
            began = time.perf_counter()
            summary = export(args.student, root / name, args.quant, **extra)
            seconds = round(time.perf_counter() - began, 1)
            model = root / name / f"model-{args.quant}.gguf"
            logits = solution_logits(model, rows, synth, captions, args.threads)
            results[name] = {**compare(reference, logits), "export_s": seconds}
            if summary.get("gptq"):
                results[name]["output_error_vs_llama_cpp"] = summary["gptq"][
                    "output_error_vs_llama_cpp"
                ]
        total = round(time.perf_counter() - start, 1)

    print(f"{args.quant} vs f16 on {len(rows)} held-out gold solutions ({args.student})")
    header = ("variant", "KL mean", "KL p99", "top-1", "digit mismatches", "export s")
    print(" | ".join(header))
    for name, r in results.items():
        digits = f"{r['digit_mismatches']}/{r['digit_positions']}"
        cells = (name, r["kl_mean"], r["kl_p99"], r["top1"], digits, r["export_s"])
        print(" | ".join(str(c) for c in cells))
    base = results["llama.cpp"]
    for name in ("imatrix", "gptq"):
        ratio = results[name]["kl_mean"] / base["kl_mean"] if base["kl_mean"] else None
        results[name]["kl_vs_llama_cpp"] = round(ratio, 3) if ratio is not None else None
    print(json.dumps({"quant": args.quant, "problems": len(rows), "seconds": total,
                      "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
