"""Run the vllm runtime backend for real on a CUDA machine and check it against the torch backend.

Needs a CUDA GPU, vLLM (`pip install 'casseat-edge[gpu]'`) and a local model (an HF directory or a
`tiny:` / `student:` / `embedded:` spec; no downloads). On `--n` problems of a synthetic benchmark
(greedy cas-seat) it measures, and prints as a table and one JSON document:

(a) stage 2's new-prefill tokens with prefix caching vs without (`reset_prefix_cache` before each
    turn), and the cascade's wall time with vs without;
(b) our backend's decode tokens/s vs raw `vllm.LLM.generate` on the same stage-1 prompts, one
    request at a time (generate(n) - generate(1) = the n - 1 decode steps, cache reset each call);
(c) greedy parity: the share of problems whose cas-seat stage texts on vllm equal the torch
    backend's (torch on cuda; float32 on both, vLLM's `dtype="float32"`).

    python3 benchmarks/gpu_vllm_runtime.py --model tiny:qwen2vl --n 20 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# benchmarks/runtime.py is named like the package measured here: keep this folder off the path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from casseat_edge.bench import BenchConfig, make_bench  # noqa: E402
from casseat_edge.loaders import load_problems  # noqa: E402
from casseat_edge.preprocess import load_image, render_prompt  # noqa: E402
from casseat_edge.prompts import stage1_messages  # noqa: E402
from runtime import Cascade  # noqa: E402
from runtime.backends.turns import TurnPrompt  # noqa: E402
from runtime.backends.vllm_backend import VllmEngine, sampling_kwargs, vllm_prompt  # noqa: E402

FIELDS = ("pid", "answer", "answer_type", "choices", "precision", "unit", "question_type")


def require_gpu() -> None:
    """Exit with one clear line where this machine cannot run vLLM."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"gpu_vllm_runtime: needs vLLM and torch ({exc.name} missing); "
            "install the extra: pip install 'casseat-edge[gpu]'"
        ) from None
    if not torch.cuda.is_available():
        raise SystemExit("gpu_vllm_runtime: no CUDA GPU visible; run this on a GPU machine")


def load_bench(n: int, tmp: str) -> list[tuple[Path | None, dict[str, Any]]]:
    make_bench(BenchConfig(out=f"{tmp}/bench", n=n, seed=0, test_fraction=0.0))
    problems = load_problems(f"{tmp}/bench")
    out = []
    for row in problems.rows:
        fields = {k: row.get(k) for k in FIELDS}
        fields.update(question=row["question"], caption=row["metadata"].get("caption"))
        out.append((problems.image_path(row), fields))
    return out


def run_cascade(engine: Any, bench: list, max_new_tokens: int, kv_reuse: bool) -> tuple:
    cascade = Cascade(engine, max_new_tokens=max_new_tokens, kv_reuse=kv_reuse)
    image, fields = bench[0]
    cascade.solve(image, **fields)  # warm-up (CUDA graphs, kernels, the vision processor)
    start = time.perf_counter()
    results = [cascade.solve(image, **fields) for image, fields in bench]
    return results, time.perf_counter() - start


def reuse_row(engine: VllmEngine, bench: list, max_new_tokens: int) -> tuple[dict, list]:
    """(a): stage-2 new-prefill tokens and wall time, prefix caching on vs off."""
    reused, wall_r = run_cascade(engine, bench, max_new_tokens, kv_reuse=True)
    fresh, wall_f = run_cascade(engine, bench, max_new_tokens, kv_reuse=False)
    new_r = sum(r.stage("stage2").new_prefill_tokens for r in reused)
    new_f = sum(r.stage("stage2").new_prefill_tokens for r in fresh)
    same = sum(
        [s.text for s in a.stages] == [s.text for s in b.stages] for a, b in zip(reused, fresh)
    )
    row = {
        "stage2_prompt_tokens": sum(r.stage("stage2").prompt_tokens for r in reused),
        "stage2_new_prefill_reuse": new_r,
        "stage2_new_prefill_no_reuse": new_f,
        "prefill_token_ratio": round(new_r / new_f, 3) if new_f else None,
        "wall_s_reuse": round(wall_r, 3),
        "wall_s_no_reuse": round(wall_f, 3),
        "wall_ratio": round(wall_r / wall_f, 3),
        "same_texts_reuse_vs_no_reuse": round(same / len(bench), 3),
    }
    return row, reused


def stage1_prompt(engine: VllmEngine, image: Path | None, fields: dict[str, Any]) -> TurnPrompt:
    problem = {**fields, "image": "<image>" if image is not None or fields["caption"] else None}
    messages = stage1_messages(problem)
    rendered = render_prompt(engine.processor, engine.arch, messages, fields["caption"])
    pixels = load_image(image) if engine.vision and image is not None else None
    return TurnPrompt(engine.tokenize(rendered), pixels)


def decode_row(engine: VllmEngine, bench: list, max_new_tokens: int) -> dict[str, Any]:
    """(b): our generate loop vs `LLM.generate`, decode tokens/s on the same prompts."""
    import vllm

    ours, raw = [], []
    for image, fields in bench:
        prompt = stage1_prompt(engine, image, fields)
        out = engine.generate(prompt, max_new_tokens, None, reuse=False)
        n = len(out.token_ids)
        if n < 2:
            continue
        elapsed = {}
        for count in (1, n):
            params = vllm.SamplingParams(
                **{**sampling_kwargs(count, 0.0, engine.seed), "min_tokens": count}
            )
            engine.llm.reset_prefix_cache()
            start = time.perf_counter()
            engine.llm.generate([vllm_prompt(prompt)], params, use_tqdm=False)
            elapsed[count] = time.perf_counter() - start
        ours.append((n - 1) / out.decode_s)
        raw.append((n - 1) / max(elapsed[n] - elapsed[1], 1e-9))
    if not ours:
        return {"note": "every stage-1 reply was a single token; raise --max-new-tokens"}
    ours_s, raw_s = statistics.median(ours), statistics.median(raw)
    return {
        "ours_tokens_per_s": round(ours_s, 2),
        "raw_tokens_per_s": round(raw_s, 2),
        "ratio": round(ours_s / raw_s, 3),
        "problems": len(ours),
    }


def parity_row(model: str, bench: list, max_new_tokens: int, vllm_results: list) -> dict:
    """(c): greedy cas-seat stage texts, vllm vs torch on cuda (float32 both)."""
    from runtime.backends.torch_backend import TorchEngine

    torch_engine = TorchEngine(model, dtype="float32", device="cuda")
    cascade = Cascade(torch_engine, max_new_tokens=max_new_tokens)
    torch_results = [cascade.solve(image, **fields) for image, fields in bench]
    per_stage: dict[str, list[bool]] = {}
    whole = []
    for ours, theirs in zip(vllm_results, torch_results):
        for a, b in zip(ours.stages, theirs.stages):
            per_stage.setdefault(a.name, []).append(a.text == b.text)
        whole.append([s.text for s in ours.stages] == [s.text for s in theirs.stages])
    return {
        "equal_all_stages": round(sum(whole) / len(whole), 3),
        **{f"equal_{name}": round(sum(v) / len(v), 3) for name, v in per_stage.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:qwen2vl", help="HF dir or tiny:/student: spec")
    parser.add_argument("--n", type=int, default=20, help="problems from a synthetic benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    args = parser.parse_args()
    require_gpu()
    engine = VllmEngine(
        args.model, dtype="float32", gpu_memory_utilization=args.gpu_memory_utilization
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench = load_bench(args.n, tmp)
        reuse, vllm_results = reuse_row(engine, bench, args.max_new_tokens)
        decode = decode_row(engine, bench, args.max_new_tokens)
        parity = parity_row(args.model, bench, args.max_new_tokens, vllm_results)
    doc = {
        "model": args.model,
        "n": len(bench),
        "max_new_tokens": args.max_new_tokens,
        "dtype": "float32",
        "reuse": reuse,
        "decode": decode,
        "parity": parity,
    }
    print(f"{'measure':<40} value")
    for section in ("reuse", "decode", "parity"):
        for key, value in doc[section].items():
            print(f"{section + '.' + key:<40} {value}")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
