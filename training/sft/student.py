"""The demo student: the Idefics3 model the main job trains on the Cas-SEAT mix, on CPU.

Two presets (`casseat_edge.models.idefics3.STUDENT_PRESETS`), each with its recipe (`RECIPES`):

- `smollm2` (the default): SmolVLM's text model, the packaged SmolLM2-135M-Instruct, under a
  small random vision tower. LoRA on every decoder layer (or, with `lora_layers`, on the top
  layers only: the layers below need no backward pass, but measured 4x less accurate), bfloat16
  autocast, samples packed into rows.
- `smolvlm` (`--student scratch` in the pipeline): 3M parameters trained from scratch, in full,
  over a domain vocabulary (`vocab="domain"`: only the SmolLM2 tokens the training texts use,
  `casseat_edge.models.tokenizer.subset_tokenizer`), after a reading warm-up.

Each phase is an ordinary `training.sft.train` run:

1. reading warm-up (optional, `warmup_steps`): image -> its caption, on the benchmark's train
   split (the prompt has the image and `WARMUP_PROMPT` only), so the vision path learns what it
   can from pixels;
2. the Cas-SEAT mix (CoT + evaluation samples from `casseat-edge synth`), caption-augmented: the
   prompt has the image and its caption text (`casseat_edge.preprocess.add_caption`), as text-only
   models get it in MathVista's caption-augmented setup. The model's manifest records
   `captions: true`, so the runtime adds the caption the same way by default.

`out` is the trained model (an HF directory with `casseat.json`, loadable and exportable like any
other; LoRA is merged); work files live in `<out>.work/`. The summary (also in the manifest under
`student`) has each phase's steps, seconds, tokens/s and losses, and after a warm-up its caption
token accuracy on held-out images, from the image and from a blank image (what the pixels add).

    summary = train_student(StudentConfig(data=("runs/synth",), bench="runs/bench", out="student"))
    scratch = StudentConfig.for_preset("smolvlm", data=("runs/synth",), bench="runs/bench")
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from casseat_edge.artifacts import (
    MANIFEST,
    check_out_dir,
    read_jsonl,
    read_manifest,
    write_json_atomic,
    write_jsonl_atomic,
)
from casseat_edge.config import StageConfig, option
from casseat_edge.errors import ConfigError, DataError
from training.sft.config import SFTConfig
from training.sft.data import SAMPLES_FILE

WARMUP_PROMPT = "Describe the image."  # training-only: the runtime never asks it
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class StudentConfig(StageConfig):
    """Config of the demo student's training (optional reading warm-up, then the Cas-SEAT mix).

    The defaults are the pretrained student's recipe (`student:smollm2`, LoRA on every layer);
    `StudentConfig.for_preset("smolvlm", ...)` gives the from-scratch student's (`RECIPES`)."""

    data: tuple[str, ...] = option((), "samples directories from `casseat-edge synth` (the mix)")
    bench: str = option("", "benchmark directory: its train split is the warm-up's images")
    out: str = option("student", "output: the trained model directory (work files: <out>.work)")
    preset: str = option(
        "smollm2",
        "student preset (`student:<preset>`): 'smollm2' (SmolLM2-135M-Instruct text model, "
        "pretrained) or 'smolvlm' (3M parameters, from scratch)",
    )
    seed: int = option(0, "seed of the initial weights, data order and the warm-up sample")
    steps: int = option(100, "optimizer steps on the Cas-SEAT mix")
    warmup_steps: int = option(0, "optimizer steps of the reading warm-up (0: none)")
    batch_size: int = option(8, "samples per optimizer step")
    method: Literal["lora", "full"] = option(
        "lora", "'lora' (adapters, merged into the saved model) or 'full' fine-tuning"
    )
    lora_r: int = option(16, "LoRA rank (alpha is 2 x rank)")
    lora_layers: int = option(
        0,
        "LoRA on the top this many decoder layers only, the vision tower and connector frozen "
        "(faster steps; 0: every layer, and the connector trained)",
    )
    qat: str = option(
        "",
        "quantization-aware LoRA for this GGUF type (q8_0, q5_0, q4_0, q4_k_m): the adapter "
        "trains on the weights as llama.cpp will round them ('': plain float training)",
    )
    lr: float = option(1e-3, "peak learning rate (linear decay)")
    warmup_lr: float = option(2e-3, "peak learning rate of the reading warm-up")
    max_length: int = option(1024, "longest sample in tokens (longer ones are skipped)")
    threads: int = option(0, "CPU threads for torch (0: torch's default)")
    caption_eval: int = option(
        40, "held-out images on which to measure the warm-up's caption token accuracy (0: skip)"
    )
    vocab: Literal["domain", "full"] = option(
        "full",
        "'domain': only the SmolLM2 tokens the training texts use (about 1.3k of 49k; those "
        "texts keep their tokens): a 40x smaller embedding and output layer, for a student "
        "trained from scratch; 'full': all 49k",
    )
    bf16: bool = option(True, "bfloat16 autocast (float32 master weights): ~1.5-2x on AVX512-BF16")
    packing: bool = option(
        True, "pack each batch's samples into as few rows as fit (no padding; see `train`)"
    )
    group_by_length: bool = option(
        False,
        "batch samples of similar length together: 35% fewer padded tokens, but measured worse "
        "at 250 steps on the scratch student (loss 1.54 vs 0.85; batches of one sample kind)",
    )
    learn_stage1: bool = option(
        False, "also learn the right stage-1 solutions inside evaluation samples (see `train`)"
    )
    overwrite: bool = option(False, "replace an existing --out (and its work directory)")

    def __post_init__(self) -> None:
        from casseat_edge.models.idefics3 import STUDENT_PRESETS

        data = (self.data,) if isinstance(self.data, str) else tuple(self.data)
        object.__setattr__(self, "data", data)
        if not data:
            raise ConfigError("--data: required; pass the directory `casseat-edge synth` wrote")
        if self.preset not in STUDENT_PRESETS:
            raise ConfigError(
                f"--preset: unknown student preset {self.preset!r}; choose one of "
                + ", ".join(STUDENT_PRESETS)
            )
        if self.warmup_steps and not self.bench:
            raise ConfigError("--bench: required for the reading warm-up (or --warmup-steps 0)")
        if self.vocab not in ("domain", "full"):
            raise ConfigError(f"--vocab: expected 'domain' or 'full', got {self.vocab!r}")
        if self.vocab == "domain" and self.pretrained:
            raise ConfigError(
                f"--vocab domain: the {self.preset!r} student's text model is pretrained over "
                "the full vocabulary; use --vocab full"
            )
        if self.method not in ("lora", "full"):
            raise ConfigError(f"--method: expected 'lora' or 'full', got {self.method!r}")
        if self.steps < 1 or self.warmup_steps < 0 or self.batch_size < 1 or self.caption_eval < 0:
            raise ConfigError(
                "--steps and --batch-size must be >= 1, --warmup-steps and --caption-eval >= 0"
            )
        if self.qat and self.method != "lora":
            raise ConfigError("--qat: only with --method lora (the adapter learns the rounding)")
        if self.lora_r < 1 or self.lora_layers < 0:
            raise ConfigError("--lora-r must be >= 1 and --lora-layers >= 0")
        if not (0 < self.lr < float("inf") and 0 < self.warmup_lr < float("inf")):
            raise ConfigError("--lr and --warmup-lr: must be finite numbers > 0")

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> StudentConfig:
        """The config of `preset`'s recipe (`RECIPES`), with `overrides` on top."""
        return cls(**{"preset": preset, **RECIPES.get(preset, {}), **overrides})

    @property
    def pretrained(self) -> bool:
        from casseat_edge.models.idefics3 import STUDENT_PRESETS

        return STUDENT_PRESETS[self.preset].text_weights is not None

    @property
    def work(self) -> Path:
        return Path(f"{self.out}.work")

    @property
    def base(self) -> str:
        return f"student:{self.preset}@{self.seed}"


# what differs from the defaults (the pretrained `smollm2` recipe) for the from-scratch student:
# full fine-tuning over a domain vocabulary, a reading warm-up, a high learning rate, padding
RECIPES: dict[str, dict[str, Any]] = {
    "smollm2": {},
    "smolvlm": dict(
        steps=400,
        warmup_steps=40,
        method="full",
        lr=2e-3,
        vocab="domain",
        packing=False,
    ),
}


def train_student(config: StudentConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build, warm up and train the student; returns the summary also stored in its manifest."""
    from casseat_edge.models import resolve_model
    from training.sft import train

    _check_out(config)
    resolve_model(config.base)  # a bad preset fails before any data is written
    start = time.perf_counter()
    summary: dict[str, Any] = {"preset": config.preset, "base": config.base}
    data = merge_samples(config.data, config.work / "mix-data")
    if config.warmup_steps:
        warm_data = write_warmup_samples(config.bench, config.work / "warmup-data", config.seed)
    base = config.base
    if config.vocab == "domain":
        base = str(domain_student(config, data))
        summary["vocab_size"] = _vocab_size(base)
    total = config.warmup_steps + config.steps
    if config.warmup_steps:
        warm = phase_config(config, warm_data, base, config.work / "warmup", warmup=True)
        warm_summary = train(warm, _offset(progress, 0, total))
        summary["warmup"] = _phase(warm_summary)
        if config.caption_eval:
            summary["warmup"]["caption_accuracy"] = caption_accuracy(
                warm.out, config.bench, split="test", limit=config.caption_eval
            )
        base = warm.out
    main = phase_config(config, data, base, Path(config.out), warmup=False)
    summary["mix"] = _phase(train(main, _offset(progress, config.warmup_steps, total)))
    summary.update(out=config.out, seconds=round(time.perf_counter() - start, 2))
    manifest = read_manifest(config.out)
    manifest["student"] = {"config": config.to_dict(), **summary}
    write_json_atomic(Path(config.out) / MANIFEST, manifest)
    return summary


def phase_config(
    config: StudentConfig, data: Path, base: str, out: Path, warmup: bool
) -> SFTConfig:
    """The SFT config of one phase (the reading warm-up, or the Cas-SEAT mix)."""
    lora = config.method == "lora" and not warmup
    return SFTConfig(
        data=str(data),
        model=base,
        out=str(out),
        method="lora" if lora else "full",
        max_steps=config.warmup_steps if warmup else config.steps,
        lr=config.warmup_lr if warmup else config.lr,
        warmup_ratio=0.05,
        weight_decay=0.0,
        batch_size=config.batch_size,
        lora_r=config.lora_r,
        lora_alpha=2 * config.lora_r,
        lora_dropout=0.0,
        lora_layers=config.lora_layers if lora else 0,
        # LoRA: the pretrained text model adapts to the captioned prompts; the vision tower stays
        # as built, and so does the connector when only the top layers adapt (training it would
        # need a backward pass through every layer)
        freeze_vision=lora,
        freeze_connector=lora and config.lora_layers > 0,
        # the warm-up of a LoRA student teaches only the vision path (its text model stays)
        freeze_lm=warmup and config.method == "lora",
        packing=config.packing,
        max_length=config.max_length,
        skip_long=True,
        seed=config.seed,
        save_steps=0,
        logging_steps=max(1, min(10, (config.warmup_steps if warmup else config.steps) // 5)),
        threads=config.threads,
        bf16=config.bf16,
        group_by_length=config.group_by_length,
        overwrite=True,
        captions=not warmup,
        learn_stage1=config.learn_stage1 and not warmup,
        qat=config.qat if lora else "",
    )


def _phase(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("samples", "steps", "epochs", "first_loss", "final_loss", "tokens_per_s")
    keys += ("allocator", "qat")  # how it ran: the allocator, the quantization-aware type
    return {**{k: summary[k] for k in keys}, "seconds": summary["train_seconds"]}


def _offset(progress: Progress | None, done: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda step, _: progress(done + step, total)


def _check_out(config: StudentConfig) -> None:
    """--overwrite replaces a model directory or an interrupted run only, never another folder."""
    from training.sft.run import is_interrupted_run

    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ConfigError(
            f"{out} already exists and is not empty; delete it, pass --overwrite "
            "or choose another --out"
        )
    check_out_dir(out, config.overwrite, kind="model", interrupted=is_interrupted_run)
    for path in (out, config.work):
        if path.exists():
            shutil.rmtree(path)


def domain_student(config: StudentConfig, data: Path) -> Path:
    """The untrained student over the domain vocabulary of its training texts, in `<work>/init`:
    the preset's tokenizer subset (`subset_tokenizer`) to the tokens the mix and the warm-up
    captions use, rendered exactly as training renders them, plus every prompt of the cascade
    policies. Other text still tokenizes (in smaller pieces: the byte tokens stay)."""
    from casseat_edge import prompts
    from casseat_edge.models import resolve_model
    from casseat_edge.models.idefics3 import Idefics3Arch
    from casseat_edge.models.tokenizer import subset_tokenizer
    from casseat_edge.preprocess import add_caption, processor_tokenizer, render_prompt
    from training.sft.data import load_samples

    ref = resolve_model(config.base)
    processor = ref.arch.load_processor(ref.path)
    texts = [  # as SFT renders the mix: caption-augmented (`phase_config`)
        render_prompt(processor, ref.arch, add_caption(s.messages, s.caption), s.caption, False)
        for s in load_samples(data)
    ]
    texts += [*_warmup_captions(config), *prompts.instruction_texts()]
    texts += ref.arch.single_token_texts
    tokenizer = subset_tokenizer(processor_tokenizer(processor), texts)
    tokenizer.save_pretrained(config.work / "vocab")
    init = config.work / "init"
    Idefics3Arch.build_student(init, config.work / "vocab", config.seed, config.preset)
    return init


def _warmup_captions(config: StudentConfig) -> list[str]:
    path = config.work / "warmup-data" / SAMPLES_FILE
    return [row["caption"] for _, row in read_jsonl(path)] if config.warmup_steps else []


def _vocab_size(model: str | Path) -> int:
    import json

    return json.loads((Path(model) / "config.json").read_text())["text_config"]["vocab_size"]


# --- data ----------------------------------------------------------------------------------------


def write_warmup_samples(bench: str | Path, out: Path, seed: int) -> Path:
    """Image -> caption samples from the benchmark's train split (images copied into `out`)."""
    from casseat_edge.loaders import load_problems

    problems = load_problems(bench)
    rows = [
        r
        for r in problems.rows
        if r.get("image") and r["metadata"].get("caption") and _split(r) == "train"
    ]
    if not rows:
        raise DataError(f"--bench {bench}: no train-split problems with an image and a caption")
    samples = []
    for row in rows:
        image = _link_image(problems.image_path(row), out / "images")
        samples.append(
            {
                "id": f"{row['pid']}:caption",
                "pid": row["pid"],
                "kind": "cot",
                "image": image,
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, _text(WARMUP_PROMPT)]},
                    {"role": "assistant", "content": [_text(row["metadata"]["caption"])]},
                ],
                "caption": row["metadata"]["caption"],
                "family": row["metadata"].get("family"),
            }
        )
    write_jsonl_atomic(out / SAMPLES_FILE, samples)
    return out


def merge_samples(dirs: tuple[str, ...], out: Path) -> Path:
    """One samples directory from several (the procedural mix and a real-teacher slice); a
    single directory is used as it is."""
    from training.sft.data import samples_file

    if len(dirs) == 1:
        return Path(dirs[0])
    rows = []
    for data in dirs:
        path = samples_file(data)
        for _, row in read_jsonl(path):
            if row.get("image"):
                row["image"] = _link_image(path.parent / row["image"], out / "images")
            rows.append(row)
    write_jsonl_atomic(out / SAMPLES_FILE, rows)
    return out


def _link_image(source: Path | None, images: Path) -> str:
    """Hard-link (else copy) an image into `images`; its path relative to the samples file."""
    if source is None or not source.is_file():
        raise DataError(f"{source}: image file not found")
    images.mkdir(parents=True, exist_ok=True)
    name = source.name
    target = images / name
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return f"{images.name}/{name}"


def _split(row: dict[str, Any]) -> str | None:
    return row.get("metadata", {}).get("split")


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


# --- what the warm-up buys -------------------------------------------------------------------------


def caption_accuracy(
    model: str | Path, bench: str | Path, split: str = "test", limit: int = 40
) -> dict[str, Any]:
    """Teacher-forced next-token accuracy on captions of `split` images: from the image, and from
    a blank (mid-grey) image of the same size (the language prior alone). The difference is what
    the pixels contribute."""
    import torch
    from PIL import Image

    from casseat_edge.loaders import load_problems
    from casseat_edge.models import load_model
    from casseat_edge.preprocess import encode, load_image
    from training.sft.data import Sample, SFTDataset

    loaded = load_model(model)
    problems = load_problems(bench)
    rows = [r for r in problems.rows if r["metadata"].get("caption") and _split(r) == split]
    rows = rows[:limit]
    if not rows:
        return {"problems": 0}
    counts = {"image": [0, 0], "blank": [0, 0]}
    for row in rows:
        messages = [
            {"role": "user", "content": [{"type": "image"}, _text(WARMUP_PROMPT)]},
            {"role": "assistant", "content": [_text(row["metadata"]["caption"])]},
        ]
        path = problems.image_path(row)
        sample = Sample(row["pid"], "cot", messages, path, None)
        dataset = SFTDataset([sample], loaded.processor, loaded.arch, max_length=4096)
        labels = torch.tensor(dataset.labels[0])
        image = load_image(path)
        for name, pixels in (("image", image), ("blank", Image.new("RGB", image.size, "grey"))):
            inputs = encode(loaded.processor, loaded.arch, messages, pixels, None, False)
            with torch.no_grad():
                logits = loaded.model(**inputs).logits[0]
            keep = labels[1:] != -100
            hits = logits[:-1].argmax(-1)[keep] == labels[1:][keep]
            counts[name][0] += int(hits.sum())
            counts[name][1] += int(keep.sum())
    return {
        "problems": len(rows),
        "tokens": counts["image"][1],
        "from_image": round(counts["image"][0] / counts["image"][1], 4),
        "from_blank_image": round(counts["blank"][0] / counts["blank"][1], 4),
    }
