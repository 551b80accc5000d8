"""The optional judge of the labeled-level filter (`--judge SPEC`): a second model teacher reviews
every stage-1 solution whose evaluation sample survived the rules, with the same stage-2 prompt.
An evaluation sample is dropped (rule `judge_disagrees`) when the judge's verdict differs from the
teacher's. Judge replies are appended to `judge_outputs.jsonl`, so `--resume` skips judged ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from casseat_edge.artifacts import JsonlAppender, read_jsonl
from casseat_edge.errors import ConfigError
from casseat_edge.prompts import assistant, parse_verdict, stage1_messages, stage2_messages
from training.synth.ddf import Labeled, Rejection
from training.synth.teachers import ChatTeacher, SynthItem, make_teacher

JUDGE_OUTPUTS = "judge_outputs.jsonl"


def run_judge(
    config: Any, out: Path, pending: list[tuple[dict[str, Any], dict[str, Any], Path | None]]
) -> None:
    """Judge (problem, teacher output, image) triples not judged yet; append one line each."""
    path = out / JUDGE_OUTPUTS
    with JsonlAppender(path) as writer:
        done = {row["pid"] for _, row in read_jsonl(path) if not row.get("error")}
        todo = [t for t in pending if t[0]["pid"] not in done]
        if not todo:
            return
        judge = make_teacher(config.judge, config)
        if not isinstance(judge, ChatTeacher):
            raise ConfigError(
                f"--judge: {config.judge!r} is not a model teacher; use llama.cpp:, embedded:, hf:, openai: or vllm:"
            )
        try:
            for start in range(0, len(todo), judge.batch_size):
                _judge_safely(judge, todo[start : start + judge.batch_size], writer)
        finally:
            judge.close()


def _judge_safely(
    judge: ChatTeacher, batch: list[tuple[dict, dict, Path | None]], writer: JsonlAppender
) -> None:
    """A failing batch is retried one by one; a failing item is recorded (no verdict) and skipped."""
    try:
        _judge_batch(judge, batch, writer)
    except Exception as exc:  # noqa: BLE001 - one bad problem must not stop the judging
        if len(batch) > 1:
            for one in batch:
                _judge_safely(judge, [one], writer)
            return
        error = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        writer.write({"pid": batch[0][0]["pid"], "verdict": None, "text": None, "error": error})


def _judge_batch(
    judge: ChatTeacher, batch: list[tuple[dict, dict, Path | None]], writer: JsonlAppender
) -> None:
    conversations = [
        stage1_messages(problem) + [assistant(output["stage1"])] + stage2_messages()
        for problem, output, _ in batch
    ]
    items = [SynthItem(problem, image) for problem, _, image in batch]
    for (problem, _, _), reply in zip(batch, judge.generate(conversations, items)):
        writer.write(
            {
                "pid": problem["pid"],
                "verdict": parse_verdict(reply.text),
                "text": reply.text,
                "stats": reply.stats(),
            }
        )


def apply_judge(labeled: Labeled, judged: dict[str, dict[str, Any]]) -> None:
    """Drop the evaluation sample when the judge's verdict differs from the teacher's."""
    if labeled.eval is None:
        return
    verdict = judged.get(labeled.pid, {}).get("verdict")
    if verdict != labeled.eval["verdict"]:
        detail = f"teacher {labeled.eval['verdict']}, judge {verdict}"
        labeled.rejections.append(
            Rejection(labeled.pid, "labeled", "judge_disagrees", detail, "eval")
        )
        labeled.eval = None


def read_judged(out: Path) -> dict[str, dict[str, Any]]:
    path = out / JUDGE_OUTPUTS
    return {row["pid"]: row for _, row in read_jsonl(path)} if path.exists() else {}  # newest wins
