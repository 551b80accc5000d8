"""The SFT loss computed only where it is needed: the output layer runs on the labelled positions.

The HF causal-LM loss projects every position of the padded batch through the output layer and
then ignores most of them (prompt, image and padding tokens carry label -100). With a 49k-token
vocabulary that projection dominates a training step of a small model (measured: ~75% of a
12M-parameter student's step on CPU). `LabelPositionTrainer` runs the decoder body, gathers the
hidden states that predict a labelled token and applies `lm_head` to those alone. The loss is the
same cross-entropy as transformers' `ForCausalLMLoss` (shifted labels, summed and divided by the
number of labelled tokens in the batch, or by `num_items_in_batch` under gradient accumulation).

Used only where it is exactly that loss: one process (DDP must call the wrapped module's forward)
and a model with the usual `.model` body + `.lm_head` layout; elsewhere the Trainer's own loss.

With `group_by_length`, the sampler gets the lengths the dataset computed up front (HF's own
fallback would encode every sample, images included, once more just to measure it).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from training.sft.data import IGNORE_INDEX


class LabelPositionTrainer(Trainer):
    """`Trainer` whose loss projects only the labelled positions through the output layer."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "input_ids", None)
        if not self.args.group_by_length or lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[len(ids) for ids in lengths],
        )

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        causal_lm = _body_and_head(self.accelerator.unwrap_model(model))
        if (
            return_outputs
            or causal_lm is None
            or self.args.world_size > 1
            or "labels" not in inputs
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        body, head = causal_lm
        divisor = num_items_in_batch if self.model_accepts_loss_kwargs else None
        return label_position_loss(body, head, inputs, divisor)


def label_position_loss(
    body: Any, head: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> torch.Tensor:
    """Cross-entropy of the next-token predictions at labelled positions only."""
    features = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = body(**features, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _body_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder body returning last_hidden_state, output layer) of a causal LM, or None."""
    if hasattr(model, "get_base_model"):  # peft: the base model with the adapters injected
        model = model.get_base_model()
    body, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if not isinstance(body, torch.nn.Module) or not isinstance(head, torch.nn.Linear):
        return None
    return body, head
