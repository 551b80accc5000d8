"""`train(config)`: supervised fine-tuning with the Hugging Face Trainer (LoRA, QLoRA, full).

The Trainer does the loop, so `accelerate launch` / `torchrun` (DDP, FSDP) work unchanged:
`torchrun --nproc_per_node 2 -m training.sft --data synth --model tiny:smolvlm --out sft`.
Output directory:

- the trained model as a plain HF directory (LoRA merged unless `--no-merge`) with the base's
  processor/tokenizer files, loadable by `casseat_edge.models.load_model(out)`;
- `adapter/` (LoRA/QLoRA): the adapter alone, for peft;
- `checkpoints/checkpoint-N` every `--save-steps` (what `--resume` continues from);
- `train_log.json` (loss, learning rate and tokens/s per logged step), `loss.png`;
- `casseat.json` (kind `model`: data hash, base spec, method, hyper-parameters, metrics).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from casseat_edge.allocator import allocator_in_use
from casseat_edge.artifacts import (
    check_out_dir,
    prepare_out_dir,
    sha256_file,
    write_json_atomic,
    write_manifest,
)
from casseat_edge.errors import ConfigError
from training.sft.collate import PackingCollator, SFTCollator
from training.sft.config import SFTConfig
from training.sft.data import SFTDataset, load_samples, samples_file
from training.sft.loss import LabelPositionTrainer
from training.sft.model import count_quantized, prepare_model
from training.sft.save import save_outputs

Progress = Callable[[int, int], None]
RUN_FILE = "run.json"  # what a --resume must match


def train(config: SFTConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Fine-tune `config.model` on `config.data`; returns the summary also stored in the manifest."""
    out = Path(config.out)
    identity = _run_identity(config)
    _check_out(out, config, identity)
    samples = load_samples(config.data, config.limit)
    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    loaded = prepare_model(config)
    dataset = SFTDataset(
        samples,
        loaded.processor,
        loaded.arch,
        config.max_length,
        config.skip_long,
        captions=config.captions,
        learn_stage1=config.learn_stage1,
    )
    _start_out(out, config, identity)
    recorder = LogRecorder(progress)
    trainer = LabelPositionTrainer(
        model=loaded.model,
        args=training_arguments(config, out),
        train_dataset=dataset,
        data_collator=_collator(config, loaded),
        callbacks=[recorder],
    )
    for quiet in (PrinterCallback, ProgressCallback):  # stdout is for results (--json)
        trainer.remove_callback(quiet)
    with warnings.catch_warnings(), _quiet_token_count():
        # the Trainer's own token counting warns on every step
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        result = trainer.train(resume_from_checkpoint=_checkpoint(out) if config.resume else None)
    summary = _summary(config, dataset, trainer, recorder, result, identity)
    if trainer.is_world_process_zero():
        save_outputs(out, config, loaded, trainer.state.log_history, recorder.rates)
        write_manifest(
            out,
            "model",
            config.to_dict(),
            inputs=identity["inputs"],
            **_manifest_extra(summary),
        )
    return summary


@contextlib.contextmanager
def _quiet_token_count():
    """Packed batches carry no attention mask, so the Trainer's token count logs on every step
    that it counts all tokens: the padding at the ends of the packed rows is counted too (on the
    Cas-SEAT mix at batch 8, about a quarter more than the samples' tokens), so tokens/s of a
    packed run overstates; compare seconds per step (benchmarks/train_throughput.py)."""
    logger = logging.getLogger("transformers.trainer")

    def quiet(record: logging.LogRecord) -> bool:
        return "count non-padding tokens" not in record.getMessage()

    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _collator(config: SFTConfig, loaded: Any) -> Any:
    pad = _pad_id(loaded.tokenizer)
    if not config.packing:
        return SFTCollator(pad)
    if not loaded.arch.packable:
        raise ConfigError(
            f"--packing: {loaded.arch.architecture} does not keep packed samples apart (its "
            "position ids are not one row of integers); train it with --no-packing"
        )
    return PackingCollator(pad, config.max_length)


def training_arguments(config: SFTConfig, out: Path) -> Any:
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit or None,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=config.dataloader_workers,
        group_by_length=config.group_by_length,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=config.bf16,
        ddp_backend=_ddp_backend(),
    )


def _ddp_backend() -> str | None:
    """gloo for CPU processes under torchrun/accelerate; the default (nccl) on GPUs."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return "gloo" if distributed and not torch.cuda.is_available() else None


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def _run_identity(config: SFTConfig) -> dict[str, Any]:
    data = samples_file(config.data)
    inputs = {"data": f"sha256:{sha256_file(data)}", "base": config.model}
    return {"inputs": inputs, "method": config.method, "model": config.model}


def _check_out(out: Path, config: SFTConfig, identity: dict[str, Any]) -> None:
    """Refuse to mix runs: a non-empty --out needs --resume (same data/base/method) or --overwrite,
    which replaces only a model directory or an interrupted run of `train`. Nothing is removed
    here: `_start_out` replaces it once the data and the model have loaded.

    Only the first process checks (under torchrun the others would race its writes)."""
    if not _is_rank_zero():
        return
    if config.resume:
        _check_resumable(out, identity)
        return
    if not config.overwrite and out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"{out} already exists and is not empty; delete it, pass --overwrite, "
            "--resume to continue it, or choose another --out"
        )
    _check_not_inside(out, config)
    check_out_dir(out, config.overwrite, kind="model", interrupted=is_interrupted_run)


def _check_not_inside(out: Path, config: SFTConfig) -> None:
    """--overwrite deletes --out only after the base and the samples are read, and the run then
    copies the base's processor files and reads sample images: neither may live under --out."""
    target = out.resolve()
    inputs = {"--data": Path(config.data), "--model": Path(config.model)}
    for flag, path in inputs.items():
        if path.exists() and path.resolve().is_relative_to(target):
            raise ConfigError(
                f"--out {out}: holds {flag} {path}, which the run reads; choose another --out"
            )


def is_interrupted_run(out: Path) -> bool:
    """A directory an earlier `train` started and did not finish: its run file, no manifest."""
    import json

    try:
        run = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(run, dict) and set(run) == {"inputs", "method", "model"}


def _start_out(out: Path, config: SFTConfig, identity: dict[str, Any]) -> None:
    """Claim --out once the data and model are ready (what a later --resume must match)."""
    if _is_rank_zero():
        if not config.resume:
            prepare_out_dir(out, config.overwrite, kind="model", interrupted=is_interrupted_run)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_FILE, identity)


def _check_resumable(out: Path, identity: dict[str, Any]) -> None:
    import json

    run_file = out / RUN_FILE
    if not run_file.is_file() or _checkpoint(out) is None:
        raise ConfigError(f"--resume: no checkpoint under {out / 'checkpoints'}; drop --resume")
    previous = json.loads(run_file.read_text())
    if previous != identity:
        raise ConfigError(
            f"--resume: {out} was trained with {previous}, not {identity}; use another --out"
        )


def _checkpoint(out: Path) -> str | None:
    folder = out / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _summary(config, dataset, trainer, recorder, result, identity) -> dict[str, Any]:
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "out": str(config.out),
        "base": config.model,
        "method": config.method,
        "captions": dataset.captions,
        "samples": len(dataset),
        "skipped_long": len(dataset.skipped),
        "label_tokens": dataset.n_label_tokens(),
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_loss": round(float(result.training_loss), 6),
        "tokens_per_s": recorder.tokens_per_s(),
        "train_seconds": round(recorder.elapsed(), 3),
        "allocator": allocator_in_use(),
        "world_size": trainer.args.world_size,
        "process_index": trainer.args.process_index,
        "quantized_layers": count_quantized(trainer.model),
        "qat": _qat_summary(trainer.model),
        "trainable_params": _count(trainer.model, trainable=True),
        "total_params": _count(trainer.model, trainable=False),
        "data": identity["inputs"]["data"],
    }


def _qat_summary(model: Any) -> dict[str, Any] | None:
    qat = getattr(model, "casseat_qat", None)
    return qat.summary() if qat is not None else None


def _manifest_extra(summary: dict[str, Any]) -> dict[str, Any]:
    # top-level `captions`: the runtime reads it to caption-augment prompts by default
    keys = ("base", "method", "captions", "samples", "skipped_long", "steps", "world_size")
    drop = (*keys, "out", "data", "process_index")
    metrics = {k: v for k, v in summary.items() if k not in drop}
    return {**{k: summary[k] for k in keys}, "metrics": metrics}


def _count(model: Any, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


class LogRecorder(TrainerCallback):
    """Trainer callback: progress, wall time and tokens/s between logged steps."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.rates: dict[int, float] = {}
        self._start = self._last_time = 0.0
        self._first_tokens = self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._start = self._last_time = time.perf_counter()
        self._first_tokens = self._last_tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress:
            self.progress(state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if logs and "loss" in logs and now > self._last_time:
            rate = (tokens - self._last_tokens) / (now - self._last_time)
            self.rates[state.global_step] = round(rate, 2)
        self._last_time, self._last_tokens = now, tokens

    def elapsed(self) -> float:
        return self._last_time - self._start

    def tokens_per_s(self) -> float | None:
        seconds = self.elapsed()
        tokens = self._last_tokens - self._first_tokens
        return round(tokens / seconds, 2) if seconds > 0 else None
