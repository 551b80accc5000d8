"""Run the vLLM teacher for real on a CUDA machine and measure what prefix caching saves.

Needs a GPU, vLLM (`pip install 'casseat-edge[gpu]'`) and a local model directory (no downloads):

    python3 benchmarks/gpu_vllm_teacher.py --model /models/Qwen2-VL-2B-Instruct --n 200

It makes a synthetic benchmark, runs `casseat-edge synth` with `vllm:MODEL`, and prints problems/s,
generated tokens/s, and stage 2's evaluated prompt tokens as a share of its whole prompt (the
tokens a cascade without cache reuse would re-prefill), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from casseat_edge.artifacts import read_jsonl
from casseat_edge.bench import BenchConfig, make_bench
from training.synth import SynthConfig, synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local HF model directory")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument(
        "--options", default="", help="extra vllm spec options, e.g. tensor_parallel_size=2"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_bench(BenchConfig(out=f"{tmp}/bench", n=args.n, seed=0, test_fraction=0.0))
        spec = f"vllm:{args.model}" + (f"?{args.options}" if args.options else "")
        stats = synthesize(
            SynthConfig(
                problems=f"{tmp}/bench", teacher=spec, out=f"{tmp}/synth", max_new_tokens=384
            )
        )
        stage2 = [
            row["stats"]["stage2"]
            for _, row in read_jsonl(Path(tmp, "synth", "teacher_outputs.jsonl"))
            if not row.get("error")
        ]
    prompt = sum(s["prompt_tokens"] for s in stage2)
    new = sum(s["new_prefill_tokens"] for s in stage2)
    row = {
        "problems_per_s": stats["throughput"]["problems_per_s"],
        "tokens_per_s": stats["throughput"]["tokens_per_s"],
        "stage2_prompt_tokens": prompt,
        "stage2_new_prefill_tokens": new,
        "stage2_prefill_share": round(new / prompt, 3) if prompt else None,
        "keep_rate": stats["keep_rate"],
    }
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
