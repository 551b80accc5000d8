"""Training tokens/s of `casseat-edge train` against a bare Hugging Face `Trainer`, in one run.

Both sides train the same model (float32, CPU) with the same LoRA config (peft), batch size, steps,
seed and samples. The data is made here: a small benchmark (`make_bench`) through the procedural
teacher (`synthesize`). "ours" is `training.sft.train(SFTConfig(...))` exactly as the CLI runs it
(lazy dataset that encodes each sample on access, our callbacks, saving the outputs). "bare" is a
`Trainer` built by hand on a plain list of tensors encoded up front by the same `SFTDataset`,
batched by the same `SFTCollator`, so both consume identical tokens and loss masks; the gap is
the cost of our wrapper.

Each side runs in its own subprocess, so peak RSS (`ru_maxrss` in the child) is its own. Tokens are
non-padding input tokens (the Trainer's `num_input_tokens_seen`); tokens/s is measured from the
end of step 1 to the end of the last step (step 1 is warm-up), with the same per-step clock on both
sides. The run fails if the two sides saw different token counts (the comparison would be void).
With `--repeats N` the sides alternate N times and each keeps its best tokens/s.
Prints a table, then one JSON line.

`--recipe student` measures what the main job's student recipe buys instead: "ours" is the mix
phase of `train_student` (`phase_config`: LoRA on the top 8 layers only, vision tower and
connector frozen, bfloat16 autocast, packed rows, the label-position loss) and "bare" is the
plain Trainer above (LoRA on every layer, float32, padded batches, the HF loss) on the same
caption-augmented samples in the same order. The Trainer's count of ours' tokens includes the
padding at the ends of the packed rows, so the ratio is of seconds per step (the same samples
per step) and ours' tokens/s is bare's non-padding tokens/s times that ratio.

    python3 benchmarks/train_throughput.py                       # tiny:smolvlm, 10 steps
    python3 benchmarks/train_throughput.py --model embedded:smollm2-135m-instruct --steps 4
    python3 benchmarks/train_throughput.py --recipe student --model student:smollm2 --steps 6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.9
SIDES = ("ours", "bare")


# ------------------------------------------------------------------ measuring (both children)
class StepClock:
    """Wall time and tokens seen at the end of each optimizer step."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def step(self, global_step: int, _max_steps: int = 0) -> None:
        self.times[global_step] = time.perf_counter()

    def tokens_per_s(self, tokens: dict[int, int]) -> float:
        """Tokens per second over steps 2..N (the span from the end of step 1 to the last)."""
        last = max(self.times)
        seconds = self.times[last] - self.times[1]
        return (tokens[last] - tokens[1]) / seconds

    def s_per_step(self) -> float:
        """Seconds per optimizer step over steps 2..N."""
        last = max(self.times)
        return (self.times[last] - self.times[1]) / (last - 1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------ the two sides
def run_ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import dataclasses

    from training.sft import SFTConfig, train
    from training.sft.student import StudentConfig, phase_config

    out = work / "ours"
    config = SFTConfig(
        data=args.data,
        model=args.model,
        out=str(out),
        max_steps=args.steps,
        batch_size=args.batch_size,
        limit=args.steps * args.batch_size,
        seed=args.seed,
        save_steps=0,
        logging_steps=1,
        overwrite=True,
    )
    if args.recipe == "student":
        student = StudentConfig(
            data=(args.data,), steps=args.steps, batch_size=args.batch_size, seed=args.seed
        )
        config = phase_config(student, Path(args.data), args.model, out, warmup=False)
        config = dataclasses.replace(config, limit=args.steps * args.batch_size, logging_steps=1)
    clock = StepClock()
    summary = train(config, progress=clock.step)
    logged = json.loads((out / "train_log.json").read_text())["steps"]
    tokens = {row["step"]: row["tokens_seen"] for row in logged}
    return {
        "tokens_per_s": clock.tokens_per_s(tokens),
        "s_per_step": clock.s_per_step(),
        "tokens": tokens[max(tokens)],
        "losses": [row["loss"] for row in logged],
        "trainable_params": summary["trainable_params"],
    }


def run_bare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A hand-built Trainer: peft LoRA on our loaded base, pre-encoded tensors, our collator."""
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

    from casseat_edge.models import load_model
    from training.sft.collate import SFTCollator
    from training.sft.config import SFTConfig
    from training.sft.data import SFTDataset, load_samples
    from training.sft.model import lora_targets, parts_for, trainable_parts

    defaults = SFTConfig(data=args.data)  # the LoRA hyper-parameters `train` uses by default
    set_seed(args.seed)  # as `train` does before loading: the LoRA init draws the same numbers
    loaded = load_model(args.model)
    parts = parts_for(loaded.arch.architecture)
    trainable = trainable_parts(defaults)
    lora = LoraConfig(
        r=defaults.lora_r,
        lora_alpha=defaults.lora_alpha,
        lora_dropout=defaults.lora_dropout,
        target_modules=lora_targets(
            loaded.model, defaults.target_modules, parts, trainable - {"connector"}
        ),
        modules_to_save=list(parts["connector"]) if "connector" in trainable else None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(loaded.model, lora)
    samples = load_samples(args.data, args.steps * args.batch_size)
    captions = args.recipe == "student"  # the student trains on caption-augmented prompts
    encoded = SFTDataset(
        samples, loaded.processor, loaded.arch, 1024 if captions else defaults.max_length,
        skip_long=captions, captions=captions,
    )  # fmt: skip
    features = [encoded[i] for i in range(len(encoded))]
    clock, tokens = StepClock(), {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):  # noqa: ANN001
            clock.step(state.global_step)
            tokens[state.global_step] = state.num_input_tokens_seen

    training_args = TrainingArguments(
        output_dir=str(work / "bare"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=defaults.lr,
        logging_steps=1,
        save_strategy="no",
        seed=args.seed,
        data_seed=args.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        use_cpu=True,
    )
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=ListDataset(features),
        data_collator=SFTCollator(int(pad_id or 0)),
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)  # keeps the child's stdout free, as `train` does
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        trainer.train()
    return {
        "tokens_per_s": clock.tokens_per_s(tokens),
        "s_per_step": clock.s_per_step(),
        "tokens": tokens[max(tokens)],
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


class ListDataset(torch.utils.data.Dataset):
    """A plain map-style dataset over already-encoded features (no work on access)."""

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


def child(args: argparse.Namespace) -> None:
    """One side in this process; writes its result (with peak RSS) to `args.result`."""
    work = Path(args.result).parent
    result = (run_ours if args.child == "ours" else run_bare)(args, work)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ the parent
def make_data(root: Path, n_samples: int, seed: int) -> Path:
    from casseat_edge.bench import BenchConfig, make_bench
    from training.synth import SynthConfig, synthesize

    # the procedural teacher yields about 1.3 training samples per problem after the held-out cut
    make_bench(BenchConfig(out=str(root / "bench"), n=max(40, n_samples), seed=seed))
    synthesize(SynthConfig(problems=str(root / "bench"), teacher="procedural", out=str(root / "s")))
    return root / "s"


def run_side(side: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    result = work / "result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side]
    command += ["--data", str(data), "--result", str(result), "--model", args.model]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--seed", str(args.seed), "--recipe", args.recipe]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # float32 CPU on both sides
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print(f"[train_throughput] {side}: {args.model}, {args.steps} steps", file=sys.stderr)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    row = {**json.loads(result.read_text()), "wall_s": time.perf_counter() - start}
    print(f"[train_throughput] {side}: {row['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    return row


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(runs, key=lambda r: r["tokens_per_s"])
    return {**best, "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def compare(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    from casseat_edge.models import resolve_model

    resolve_model(args.model)  # builds/caches tiny models here, not inside one side's timing
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        data = make_data(Path(tmp), args.steps * args.batch_size, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for repeat in range(args.repeats):
            for side in SIDES:
                runs[side].append(run_side(side, args, data, Path(tmp, f"{side}-{repeat}")))
    rows = {side: best_of(runs[side]) for side in SIDES}
    ours, bare = rows["ours"], rows["bare"]
    if args.recipe == "plain" and ours["tokens"] != bare["tokens"]:
        raise SystemExit(
            f"ours saw {ours['tokens']} tokens, bare saw {bare['tokens']}: the two runs did not "
            "train on the same batches, so their tokens/s are not comparable"
        )
    if args.recipe == "plain":
        ratio = ours["tokens_per_s"] / bare["tokens_per_s"]
    else:  # same samples per step; packed rows count their leftover padding as tokens
        ratio = bare["s_per_step"] / ours["s_per_step"]
        # so ours' sample tokens per second are bare's (non-padding, the same samples) x ratio
        ours["tokens_per_s"] = bare["tokens_per_s"] * ratio
    summary = {
        "model": args.model,
        "recipe": args.recipe,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "tokens": ours["tokens"],
        "ours_tokens_per_s": round(ours["tokens_per_s"], 1),
        "bare_tokens_per_s": round(bare["tokens_per_s"], 1),
        "ours_s_per_step": round(ours["s_per_step"], 3),
        "bare_s_per_step": round(bare["s_per_step"], 3),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "ours_peak_rss_mib": round(ours["peak_rss_mib"], 1),
        "bare_peak_rss_mib": round(bare["peak_rss_mib"], 1),
        "ours_wall_s": round(ours["wall_s"], 1),
        "bare_wall_s": round(bare["wall_s"], 1),
        "same_trainable_params": ours["trainable_params"] == bare["trainable_params"],
        "loss_max_abs_diff": _max_diff(ours["losses"], bare["losses"])
        if args.recipe == "plain"
        else None,  # different recipes: different losses
    }
    return rows, summary


def _max_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return round(max((abs(x - y) for x, y in zip(a, b)), default=0.0), 6)


def render(rows: dict[str, dict[str, Any]], summary: dict[str, Any]) -> str:
    head = f"{'run':<5} {'tokens/s':>9} {'s/step':>7} {'tokens':>7} {'first loss':>10} "
    head += f"{'last loss':>9} "
    head += f"{'peak RSS MiB':>12} {'wall s':>7}"
    lines = [head]
    for side, row in rows.items():
        lines.append(
            f"{side:<5} {row['tokens_per_s']:>9.1f} {row['s_per_step']:>7.2f} {row['tokens']:>7} "
            f"{row['losses'][0]:>10.4f} "
            f"{row['losses'][-1]:>9.4f} {row['peak_rss_mib']:>12.1f} {row['wall_s']:>7.1f}"
        )
    measure = "tokens/s" if summary["recipe"] == "plain" else "steps/s"
    lines.append(
        f"ratio ours/bare ({measure}): {summary['ratio']:.3f}x (target >= {TARGET_RATIO}x); "
        f"loss max |diff|: {summary['loss_max_abs_diff']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:smolvlm", help="model spec for both sides")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (>= 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, LoRA init, order")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the sides this often")
    parser.add_argument(
        "--recipe",
        choices=("plain", "student"),
        default="plain",
        help="'plain': the same LoRA run on both sides; 'student': the student recipe vs plain",
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps: must be >= 2 (step 1 is warm-up), found {args.steps}")
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats: must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    rows, summary = compare(args)
    print(render(rows, summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
