"""Training samples from labeled teacher outputs: chat `messages` in the HF/TRL convention, the
CoT + evaluation mix at a configured ratio, and a held-out split that never shares an image with
the training split.

A CoT sample is the stage-1 turn and its reply. An evaluation sample is the whole cascade: the
stage-1 turn, the stage-1 reply, the short stage-2 turn and the review (training puts the loss on
the final assistant turn). A SEAT sample is the long prompt and its reply.
"""

from __future__ import annotations

import random
from typing import Any

from casseat_edge.artifacts import stable_fraction
from casseat_edge.prompts import (
    assistant,
    prompt_info,
    seat_messages,
    stage1_messages,
    stage2_messages,
)


def build_samples(
    labeled: Any, output: dict[str, Any], problem: dict[str, Any], teacher: str, image: str | None
) -> list[dict[str, Any]]:
    """The samples that survived DDF for one problem."""
    samples = []
    first = stage1_messages(problem)
    if labeled.cot:
        samples.append(
            _sample(
                problem, "cot", first + [assistant(output["stage1"])], labeled.cot, teacher, image
            )
        )
    if labeled.eval:
        messages = first + [
            assistant(output["stage1"]),
            *stage2_messages(),
            assistant(output["stage2"]),
        ]
        samples.append(_sample(problem, "eval", messages, labeled.eval, teacher, image))
    if labeled.seat:
        messages = seat_messages(problem) + [assistant(output["seat"])]
        samples.append(_sample(problem, "seat", messages, labeled.seat, teacher, image))
    return samples


def _sample(
    problem: dict[str, Any],
    kind: str,
    messages: list[dict[str, Any]],
    label: dict[str, Any],
    teacher: str,
    image: str | None,
) -> dict[str, Any]:
    metadata = problem.get("metadata", {})
    return {
        "id": f"{problem['pid']}:{kind}",
        "pid": problem["pid"],
        "kind": kind,
        "image": image,
        "messages": messages,
        "teacher": {"spec": teacher, **prompt_info()},
        "label": label,
        "caption": metadata.get("caption"),
        "family": metadata.get("family"),
    }


def held_out_group(image_hash: str | None, pid: str, seed: int, fraction: float) -> bool:
    """True when the problem's image goes to the held-out split (decided per image content)."""
    return stable_fraction(f"{seed}:{image_hash or 'pid:' + pid}") < fraction


def mix(
    samples: list[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Downsample CoT or evaluation samples so evaluation samples make up `eval_fraction`.
    When one kind is missing altogether the other is kept whole (stats show the actual share)."""
    cot = [s for s in samples if s["kind"] == "cot"]
    evals = [s for s in samples if s["kind"] == "eval"]
    other = [s for s in samples if s["kind"] not in ("cot", "eval")]
    rng = random.Random(f"mix:{seed}")
    if eval_fraction >= 1.0:
        cot = []
    elif eval_fraction <= 0.0:
        evals = []
    elif not cot or not evals:
        pass  # the ratio cannot be met: keep what there is rather than an empty dataset
    elif len(evals) > round(eval_fraction / (1 - eval_fraction) * len(cot)):
        evals = _subsample(evals, round(eval_fraction / (1 - eval_fraction) * len(cot)), rng)
    else:
        cot = _subsample(cot, round((1 - eval_fraction) / eval_fraction * len(evals)), rng)
    kept = {id(s) for s in cot + evals + other}
    mixed = [s for s in samples if id(s) in kept]  # keep the problem order
    dropped = {
        "cot": sum(s["kind"] == "cot" for s in samples) - len(cot),
        "eval": sum(s["kind"] == "eval" for s in samples) - len(evals),
    }
    return mixed, dropped


def _subsample(items: list[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    return items if count >= len(items) else rng.sample(items, count)
