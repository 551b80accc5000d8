"""Writing a finished run: the model directory, the adapter, `train_log.json` and `loss.png`.

LoRA/QLoRA adapters are saved alone under `adapter/`; with `--merge` they are also folded into the
base weights and the result saved as a plain HF directory (QLoRA merges into a float copy of the
base, not into 4-bit weights, so the merged model is not degraded by re-quantization). The base's
processor and tokenizer files are copied verbatim, so the output loads exactly like the base.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from casseat_edge.artifacts import MANIFEST, write_json_atomic
from casseat_edge.models import LoadedModel, load_model

ADAPTER_DIR = "adapter"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
MODEL_FILES = {"config.json", "generation_config.json", MANIFEST, "model.safetensors.index.json"}


def save_outputs(
    out: Path,
    config: Any,
    loaded: LoadedModel,
    log_history: list[dict[str, Any]],
    rates: dict[int, float],
) -> None:
    """Everything a finished run leaves in `out` except the manifest."""
    qat = getattr(loaded.model, "casseat_qat", None)
    if qat is not None:  # the saved model is the plain one; llama.cpp rounds it on export
        qat.detach()
    if config.method == "full":
        save_model_dir(loaded.model, loaded.ref.path, out)
    else:
        loaded.model.save_pretrained(out / ADAPTER_DIR)
        if config.merge:
            save_model_dir(
                merged_model(loaded, config.method, out / ADAPTER_DIR), loaded.ref.path, out
            )
    log = train_log(log_history, rates)
    write_json_atomic(out / "train_log.json", log)
    plot_loss(log["steps"], out / "loss.png")


def merged_model(loaded: LoadedModel, method: str, adapter: Path) -> Any:
    """The base with the adapter folded in (QLoRA: into a float32 reload of the base)."""
    if method != "qlora":
        return loaded.model.merge_and_unload()
    from peft import PeftModel

    base = load_model(loaded.ref).model
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()


def save_model_dir(model: Any, base_dir: Path, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    for path in sorted(Path(base_dir).iterdir()):
        if path.is_file() and path.name not in MODEL_FILES and path.suffix not in WEIGHT_SUFFIXES:
            shutil.copy2(path, out / path.name)


def train_log(log_history: list[dict[str, Any]], rates: dict[int, float]) -> dict[str, Any]:
    """Per logged step: loss, learning rate, grad norm, tokens seen and tokens/s (this session)."""
    steps = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        row = {
            k: entry[k]
            for k in ("step", "epoch", "loss", "learning_rate", "grad_norm")
            if k in entry
        }
        row["tokens_seen"] = entry.get("num_input_tokens_seen")
        row["tokens_per_s"] = rates.get(entry["step"])
        steps.append(row)
    final = next((e for e in reversed(log_history) if "train_runtime" in e), {})
    return {"steps": steps, "final": final}


def plot_loss(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(
        [s["step"] for s in steps],
        [s["loss"] for s in steps],
        marker="." if len(steps) < 50 else None,
    )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("SFT loss (assistant tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
