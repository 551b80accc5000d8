"""Runtime ratios, measured in one run on the packaged SmolLM2-135M-Instruct, printed as a table
and one JSON line:

(a) per backend: stage-2 new-prefill tokens vs the tokens a no-reuse cascade re-prefills, and the
    cascade's wall time with vs without KV reuse (p50 over repeats, warm-up excluded); plus a
    `llama.cpp+img` row on an image GGUF (tiny:smolvlm F32 + mmproj, `--no-image-gguf` skips it);
(b) our llama.cpp backend's decode tokens/s vs raw llama-cpp-python generation (same GGUF, prompt,
    token count, threads; greedy);
(c) our onnxruntime backend's decode tokens/s vs optimum's ORTModelForCausalLM (optimum-onnx, the
    dev extra) on the same model in fp32: our split export vs optimum's own export, same prompt,
    token count and threads, greedy (target >= 1.0);
(d) implied decode GB/s (model bytes x decode tokens/s) vs this machine's numpy read bandwidth.

    python3 benchmarks/runtime.py --repeats 3 --max-new-tokens 48 --threads 2
    python3 benchmarks/runtime.py --backends "" --ort      # (c) without the backend rows
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# this file is named like the package it measures: keep its folder off the import path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from casseat_edge.prompts import stage1_messages  # noqa: E402
from runtime import Cascade  # noqa: E402
from runtime.backends import Conversation  # noqa: E402
from runtime.profiler import peak_rss_mb  # noqa: E402

MODEL = "embedded:smollm2-135m-instruct"
QUESTION = "What is the area of the rectangle?"
FIELDS = {"answer": "12", "answer_type": "integer", "caption": "A rectangle 3 wide and 4 tall."}


def reuse_ratio(
    engine: Any, repeats: int, max_new_tokens: int, image: Any = None
) -> dict[str, Any]:
    """(a): the same greedy cas-seat problem with and without KV reuse (one token per decode
    pass on both sides: speculative decoding is measured by benchmarks/speculative.py)."""
    rows: dict[bool, Any] = {}
    for reuse in (True, False):
        cascade = Cascade(engine, max_new_tokens=max_new_tokens, kv_reuse=reuse, draft_tokens=0)
        cascade.solve(image, QUESTION, **FIELDS)  # warm-up
        walls, results = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            results.append(cascade.solve(image, QUESTION, **FIELDS))
            walls.append(time.perf_counter() - start)
        rows[reuse] = (statistics.median(walls), results[-1])
    (wall_r, res_r), (wall_f, res_f) = rows[True], rows[False]
    s2r, s2f = res_r.stage("stage2"), res_f.stage("stage2")
    decode = [s.decode_tokens_per_s for s in res_r.stages if s.decode_tokens_per_s]
    return {
        "backend": engine.name,
        "stage2_prompt_tokens": s2r.prompt_tokens,
        "stage2_new_prefill_reuse": s2r.new_prefill_tokens,
        "stage2_new_prefill_no_reuse": s2f.new_prefill_tokens,
        "prefill_token_ratio": round(s2r.new_prefill_tokens / s2f.new_prefill_tokens, 3),
        "stage2_prefill_ms_reuse": s2r.prefill_ms,
        "stage2_prefill_ms_no_reuse": s2f.prefill_ms,
        "wall_s_reuse": round(wall_r, 3),
        "wall_s_no_reuse": round(wall_f, 3),
        "wall_ratio": round(wall_r / wall_f, 3),
        "same_tokens": [s.text for s in res_r.stages] == [s.text for s in res_f.stages],
        "decode_tokens_per_s": round(statistics.mean(decode), 2) if decode else None,
        "model_bytes": engine.model_bytes(),
    }


def raw_ratio(engine: Any, repeats: int, max_new_tokens: int) -> dict[str, Any]:
    """(b): our decode loop vs llama-cpp-python's own `generate`, same prompt and token count."""
    messages = stage1_messages({"question": QUESTION, "answer_type": "integer", "image": None})
    ours, raw = [], []
    ids = engine.encode(messages, None, None).ids
    for i in range(repeats + 1):
        out = Conversation(engine).turn(messages, max_new_tokens=max_new_tokens)
        n = out.completion_tokens
        llm = engine.session.llm  # the same Llama object our driver decodes with
        llm.reset()
        count, first, end = 0, 0.0, 0.0
        for _ in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            count += 1
            first = first or time.perf_counter()
            if count >= n:
                end = time.perf_counter()
                break
        if i and n > 1:  # the first round is the warm-up
            ours.append((n - 1) / (out.decode_ms / 1e3))
            raw.append((count - 1) / (end - first))
    ours_s, raw_s = statistics.median(ours), statistics.median(raw)
    return {"ours_tokens_per_s": round(ours_s, 2), "raw_tokens_per_s": round(raw_s, 2),
            "ratio": round(ours_s / raw_s, 3), "target": 0.95}  # fmt: skip


def ort_ratio(
    repeats: int, max_new_tokens: int, threads: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(c): our onnxruntime engine vs optimum's ORTModelForCausalLM, decode tokens/s (fp32);
    also the engine's (a) row."""
    import onnxruntime as ort
    import torch
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForCausalLM

    from casseat_edge.config import load_config
    from casseat_edge.models import resolve_model
    from export.onnx import OnnxExportConfig, export_onnx
    from runtime.backends.onnxruntime_backend import OrtEngine

    work = Path(tempfile.mkdtemp(prefix="casseat-ort-bench-"))
    values = {"model": MODEL, "out": str(work / "ours"), "quant": ("fp32",), "verify": False}
    export_onnx(load_config(OnnxExportConfig, overrides=values))
    main_export(str(resolve_model(MODEL).path), work / "optimum",
                task="text-generation-with-past", do_validation=False)  # fmt: skip
    engine = OrtEngine(work / "ours", threads=threads)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    theirs = ORTModelForCausalLM.from_pretrained(work / "optimum", session_options=options)
    messages = stage1_messages({"question": QUESTION, "answer_type": "integer", "image": None})
    ids = torch.tensor([engine.encode(messages, None, FIELDS["caption"]).ids])
    ours_tps, theirs_tps = [], []
    for i in range(repeats + 1):  # the first round is the warm-up
        out = Conversation(engine).turn(messages, caption=FIELDS["caption"],
                                        max_new_tokens=max_new_tokens)  # fmt: skip
        n = out.completion_tokens
        elapsed = {}
        for count in (1, n):  # generate(n) - generate(1) = the n - 1 decode steps
            start = time.perf_counter()
            theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                            min_new_tokens=count, do_sample=False)  # fmt: skip
            elapsed[count] = time.perf_counter() - start
        if i and n > 1:
            ours_tps.append((n - 1) / (out.decode_ms / 1e3))
            theirs_tps.append((n - 1) / (elapsed[n] - elapsed[1]))
    reuse_row, model_bytes = reuse_ratio(engine, repeats, max_new_tokens), engine.model_bytes()
    shutil.rmtree(work, ignore_errors=True)  # two fp32 copies of the model
    ours_s, theirs_s = statistics.median(ours_tps), statistics.median(theirs_tps)
    return {"ours_tokens_per_s": round(ours_s, 2), "optimum_tokens_per_s": round(theirs_s, 2),
            "ratio": round(ours_s / theirs_s, 3), "target": 1.0,
            "model_bytes": model_bytes}, reuse_row  # fmt: skip


def image_gguf_row(repeats: int, max_new_tokens: int, threads: int | None) -> dict[str, Any]:
    """(a) for an image GGUF: tiny:smolvlm exported to F32 GGUF + mmproj, a 64-px image through
    libmtmd; `encoder_runs_per_solve` counts vision-encoder runs (the image is encoded once)."""
    from PIL import Image

    from casseat_edge.config import load_config
    from export.gguf import GgufExportConfig, export_gguf
    from runtime.backends.llamacpp import LlamaCppEngine

    work = Path(tempfile.mkdtemp(prefix="casseat-gguf-bench-"))
    values = {"model": "tiny:smolvlm", "out": str(work), "quant": "f32", "mmproj_quant": "f32",
              "verify": False, "overwrite": True}  # fmt: skip
    export_gguf(load_config(GgufExportConfig, overrides=values))
    engine = LlamaCppEngine(work / "model-f32.gguf", threads=threads)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    runs_before = engine.session.encoder_runs
    row = reuse_ratio(engine, repeats, max_new_tokens, Image.fromarray(pixels))
    solves = 2 * (repeats + 1)
    row.update(backend="llama.cpp+img", model="tiny:smolvlm f32 + mmproj",
               encoder_runs_per_solve=(engine.session.encoder_runs - runs_before) / solves)  # fmt: skip
    engine.close()
    return row


def read_bandwidth_gbs() -> float:
    """Numpy sum over a 512 MiB array: bytes read per second (best of 3)."""
    data = np.ones(64 * 1024 * 1024, dtype=np.float64)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backends", default="llama.cpp,torch")
    parser.add_argument(
        "--ort",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure (c): our onnxruntime backend vs optimum (needs optimum-onnx)",
    )
    parser.add_argument(
        "--image-gguf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add an (a) row for an image GGUF (tiny:smolvlm F32 + mmproj through libmtmd)",
    )
    args = parser.parse_args()
    from casseat_edge.registry import BACKENDS

    rows, raw = [], None
    for name in filter(None, args.backends.split(",")):
        engine = BACKENDS.get(name)(MODEL, threads=args.threads)
        rows.append(reuse_ratio(engine, args.repeats, args.max_new_tokens))
        if name == "llama.cpp":
            raw = raw_ratio(engine, args.repeats, args.max_new_tokens)
        engine.close()
    if args.image_gguf:
        rows.append(image_gguf_row(args.repeats, args.max_new_tokens, args.threads))
    ort_row = None
    if args.ort:
        ort_row, ort_reuse = ort_ratio(args.repeats, args.max_new_tokens, args.threads)
        rows.append(ort_reuse)
    bandwidth = read_bandwidth_gbs()
    for row in rows:
        gbs = (row["decode_tokens_per_s"] or 0) * row["model_bytes"] / 1e9
        row.update(decode_gbs=round(gbs, 2), bandwidth_pct=round(100 * gbs / bandwidth, 1))
    print(f"{'backend':<10}{'s2 new':>8}{'s2 full':>8}{'ratio':>7}{'wall r/f (s)':>16}"
          f"{'same':>6}{'tok/s':>8}{'GB/s':>7}{'% bw':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['backend']:<10}{r['stage2_new_prefill_reuse']:>8}"
              f"{r['stage2_new_prefill_no_reuse']:>8}{r['prefill_token_ratio']:>7}"
              f"{r['wall_s_reuse']:>8}/{r['wall_s_no_reuse']:<7}{str(r['same_tokens']):>6}"
              f"{r['decode_tokens_per_s']:>8}{r['decode_gbs']:>7}{r['bandwidth_pct']:>6}")  # fmt: skip
    if raw:
        print(f"llama.cpp decode: ours {raw['ours_tokens_per_s']} vs raw llama-cpp-python "
              f"{raw['raw_tokens_per_s']} tokens/s = {raw['ratio']}x (target >= 0.95)")  # fmt: skip
    if ort_row:
        print(f"onnxruntime decode: ours {ort_row['ours_tokens_per_s']} vs optimum "
              f"ORTModelForCausalLM {ort_row['optimum_tokens_per_s']} tokens/s = "
              f"{ort_row['ratio']}x (target >= 1.0)")  # fmt: skip
    print(f"read bandwidth {bandwidth:.1f} GB/s; peak RSS {peak_rss_mb()} MB")
    print(json.dumps({"reuse": rows, "llamacpp_vs_raw": raw, "ort_vs_optimum": ort_row,
                      "read_bandwidth_gbs": round(bandwidth, 2), "peak_rss_mb": peak_rss_mb()}))  # fmt: skip


if __name__ == "__main__":
    main()
