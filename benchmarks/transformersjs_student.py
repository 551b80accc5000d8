"""The trained student's ONNX export in transformers.js (Node), the client a web tutoring app runs,
against our onnxruntime backend on held-out problems with their images.

For each problem: stage 1 of the cascade (the `cot` prompt, caption-augmented when the student was
trained so), greedy. Ours: `OrtEngine` + `Conversation` (no drafting). transformers.js:
tests/js/batch.mjs loads the same export directory once and generates from our prompt ids and
pixel tensors (its own Idefics3 processor lacks libmtmd's 1x1 tile the student was trained with;
tests/test_transformersjs.py pins that difference). Prints how many token sequences and answers
are identical, both accuracies, and transformers.js' generation time relative to ours (same run).

    python3 benchmarks/transformersjs_student.py --onnx OUT/export/onnx --bench OUT/bench \\
        --quant int8 --limit 10

Needs node and `npm ci --prefix tests/js` (scripts/setup.sh runs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
JS_DIR = ROOT / "tests" / "js"


def without_stops(engine, ids: list[int]) -> list[int]:
    """The reply without a trailing stop token (generate() keeps its EOS; compare the text)."""
    while ids and engine.is_stop(ids[-1]):
        ids = ids[:-1]
    return ids


def main() -> None:
    from casseat_edge.answers import extract, is_correct
    from casseat_edge.artifacts import read_manifest
    from casseat_edge.loaders import load_problems
    from casseat_edge.preprocess import add_caption, load_image
    from casseat_edge.prompts import stage1_messages
    from runtime.backends import Conversation
    from runtime.backends.onnxruntime_backend import OrtEngine
    from runtime.cascade import trained_with_captions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="the ONNX export directory (OUT/export/onnx)")
    parser.add_argument("--bench", required=True, help="the benchmark directory (OUT/bench)")
    parser.add_argument("--quant", default="int8", help="the variant: fp32 | int8 | int4")
    parser.add_argument("--limit", type=int, default=10, help="held-out problems (test split)")
    parser.add_argument("--max-new-tokens", type=int, default=224)
    args = parser.parse_args()
    if not (JS_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        sys.exit(f"{JS_DIR}: no @huggingface/transformers; run `npm ci --prefix tests/js`")

    problems = load_problems(args.bench)
    rows = [r for r in problems.rows if r["metadata"].get("split") == "test"][: args.limit]
    engine = OrtEngine(args.onnx, args.quant)
    captions = bool(trained_with_captions(engine.spec)) and engine.vision
    dtype = read_manifest(args.onnx, kind="export")["onnx"]["transformers_js_dtype"][args.quant]
    ours, items, our_ms = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            path = problems.image_path(row)
            image = load_image(path) if path and engine.vision else None
            caption = row["metadata"].get("caption")
            messages = stage1_messages(row)
            messages = add_caption(messages, caption) if captions else messages
            encoded = engine.encode(messages, image, caption)
            conversation = Conversation(engine)
            start = time.perf_counter()
            out = conversation.turn(messages, image, caption, args.max_new_tokens)
            our_ms.append((time.perf_counter() - start) * 1e3)
            assert conversation.ids[: out.prompt_tokens] == encoded.ids, (
                "encode() is not the turn's"
            )
            ours.append(without_stops(engine, conversation.ids[out.prompt_tokens :]))
            item = {"input_ids": encoded.ids}
            if encoded.extra and "pixel_values" in encoded.extra:
                for name, kind in (
                    ("pixel_values", np.float32),
                    ("pixel_attention_mask", np.uint8),
                ):
                    array = np.ascontiguousarray(encoded.extra[name], dtype=kind)
                    array.tofile(Path(tmp) / f"{name}-{i}")
                    item[name] = {"file": str(Path(tmp) / f"{name}-{i}"), "dims": list(array.shape)}
            items.append(item)
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"model_dir": args.onnx, "dtype": dtype, "items": items,
                                       "max_new_tokens": args.max_new_tokens}))  # fmt: skip
        done = subprocess.run(["node", str(JS_DIR / "batch.mjs"), str(request)], cwd=JS_DIR,
                              capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"transformers.js failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    same_tokens = same_answer = right_ours = right_theirs = 0
    for row, mine, got in zip(rows, ours, answer["results"], strict=True):
        theirs = without_stops(engine, got["ids"])
        text_ours = engine.tokenizer.decode(mine, skip_special_tokens=True)
        text_theirs = engine.tokenizer.decode(theirs, skip_special_tokens=True)
        a_ours, a_theirs = extract(text_ours, row), extract(text_theirs, row)
        same_tokens += mine == theirs
        same_answer += a_ours == a_theirs
        right_ours += is_correct(a_ours, row)
        right_theirs += is_correct(a_theirs, row)
    n = len(rows)
    js_ms = [r["ms"] for r in answer["results"]]
    print(f"{args.onnx} [{args.quant}], {n} held-out problems, stage 1 greedy, "
          f"{args.max_new_tokens} new tokens at most")  # fmt: skip
    print(f"identical token sequences: {same_tokens}/{n}; identical answers: {same_answer}/{n}")
    print(f"accuracy: ours {right_ours / n:.3f}, transformers.js {right_theirs / n:.3f}")
    print(f"generation: ours {sum(our_ms) / 1e3:.1f} s, transformers.js {sum(js_ms) / 1e3:.1f} s "
          f"({sum(js_ms) / sum(our_ms):.2f}x ours; its model load {answer['load_ms'] / 1e3:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
