"""`casseat-edge synth` end to end: the procedural teacher at scale, the real packaged SmolLM2
through llama.cpp (stage 2 continuing from stage 1's KV cache), the hf teacher on tiny VLMs, and a
run killed with SIGKILL that resumes without duplicates or losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casseat_edge.artifacts import read_jsonl
from casseat_edge.bench import BenchConfig, make_bench
from casseat_edge.errors import ConfigError
from casseat_edge.prompts import PROMPT_HASH
from training.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    make_bench(BenchConfig(out=str(out), n=480, seed=11, test_fraction=0.25))  # >300 train
    return out


def _rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


def test_procedural_300_problems(bench, tmp_path):
    start = time.perf_counter()
    stats = synthesize(
        SynthConfig(
            problems=str(bench),
            teacher="procedural",
            out=str(tmp_path / "s"),
            limit=300,
            error_rate=0.3,
            eval_error_rate=0.1,
            seed=2,
        )
    )
    seconds = time.perf_counter() - start
    print(f"procedural: 300 problems in {seconds:.2f} s, {json.dumps(stats['keep_rate'])}")
    assert stats["problems"] == 300 and stats["teacher_errors"] == 0
    assert set(stats["verdicts"]) == {"Accept", "Refine"}
    labeled = stats["rejections"]["labeled"]
    assert labeled["stage1_incorrect"] > 50 and sum(labeled.values()) > labeled["stage1_incorrect"]
    samples = _rows(tmp_path / "s" / "samples.jsonl")
    heldout = _rows(tmp_path / "s" / "heldout.jsonl")
    kinds = {s["kind"] for s in samples}
    assert kinds == {"cot", "eval"}
    evals = sum(s["kind"] == "eval" for s in samples)
    assert abs(evals / len(samples) - 0.5) < 0.02
    assert all(s["teacher"]["prompt_hash"] == PROMPT_HASH for s in samples)
    assert not {s["image"] for s in samples} & {s["image"] for s in heldout}
    assert all((tmp_path / "s" / s["image"]).is_file() for s in samples)
    rejected = _rows(tmp_path / "s" / "rejected.jsonl")
    assert len(rejected) == sum(sum(v.values()) for v in stats["rejections"].values())
    import datasets

    dataset = datasets.load_dataset(
        "json", data_files=str(tmp_path / "s" / "samples.jsonl"), split="train"
    )
    assert len(dataset) == len(samples) and dataset[0]["messages"][0]["role"] == "user"


def test_seat_mode(bench, tmp_path):
    stats = synthesize(
        SynthConfig(
            problems=str(bench),
            teacher="procedural",
            out=str(tmp_path / "s"),
            mode="seat",
            limit=60,
        )
    )
    samples = _rows(tmp_path / "s" / "samples.jsonl")
    assert {s["kind"] for s in samples} == {"seat"} and stats["keep_rate"]["seat"] > 0.5


def test_out_dir_guard_and_resume_config_check(bench, tmp_path):
    config = SynthConfig(
        problems=str(bench), teacher="procedural", out=str(tmp_path / "s"), limit=5
    )
    synthesize(config)
    with pytest.raises(ConfigError, match="already exists and is not empty; pass --resume"):
        synthesize(config)
    with pytest.raises(ConfigError, match="--resume needs the same settings"):
        synthesize(
            SynthConfig(**{**config.to_dict(), "resume": True, "error_rate": 0.9, "families": ()})
        )
    again = synthesize(SynthConfig(**{**config.to_dict(), "resume": True, "families": ()}))
    assert again["problems"] == 5 and again["throughput"]["problems_per_s"] == 0.0


def test_embedded_smollm2_teacher_real_cascade(bench, tmp_path):
    stats = synthesize(
        SynthConfig(
            problems=str(bench),
            teacher="embedded:smollm2-135m-instruct",
            out=str(tmp_path / "s"),
            limit=10,
            max_new_tokens=96,
        )
    )
    print(
        "embedded teacher:",
        json.dumps({k: stats[k] for k in ("keep_rate", "rejections", "throughput")}),
    )
    outputs = _rows(tmp_path / "s" / "teacher_outputs.jsonl")
    assert len(outputs) == 10 and not any(o["error"] for o in outputs)
    for output in outputs:
        s1, s2 = output["stats"]["stage1"], output["stats"]["stage2"]
        assert output["stage1"] and output["stage2"] is not None
        # stage 2 continues from stage 1's KV cache: only its own new tokens are evaluated
        assert s2["new_prefill_tokens"] < s2["prompt_tokens"] - s1["prompt_tokens"] + 5
    assert stats["throughput"]["tokens_per_s"] > 0
    total = sum(sum(v.values()) for v in stats["rejections"].values())
    assert total >= 1  # the 135M model is often wrong: DDF has real work


@pytest.mark.parametrize("spec", ["hf:tiny:smolvlm", "hf:tiny:qwen2vl"])
def test_hf_teacher_batched_on_tiny_vlms(bench, tmp_path, spec):
    synthesize(
        SynthConfig(
            problems=str(bench),
            teacher=spec,
            out=str(tmp_path / "s"),
            limit=3,
            max_new_tokens=6,
            batch_size=3,
        )
    )
    outputs = _rows(tmp_path / "s" / "teacher_outputs.jsonl")
    assert len(outputs) == 3 and not any(o["error"] for o in outputs)
    assert all(o["stats"]["stage1"]["completion_tokens"] <= 6 for o in outputs)


def test_sigkill_then_resume_loses_and_duplicates_nothing(bench, tmp_path):
    out = tmp_path / "s"
    args = [
        sys.executable,
        "-m",
        "casseat_cli.cli",
        "--quiet",
        "synth",
        "--problems",
        str(bench),
        "--teacher",
        "embedded:smollm2-135m-instruct",
        "--out",
        str(out),
        "--limit",
        "8",
        "--max-new-tokens",
        "48",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outputs = out / "teacher_outputs.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if outputs.exists() and outputs.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = outputs.read_text().count("\n")
    assert 2 <= done_before < 8
    resumed = subprocess.run(
        args + ["--resume", "--json"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    stats = json.loads(resumed.stdout)
    pids = [row["pid"] for row in _rows(outputs)]
    assert len(pids) == len(set(pids)) == 8 == stats["problems"]


def test_judge_drops_evaluations_it_disagrees_with(bench, tmp_path):
    """A real (tiny, random) hf judge rarely writes a parseable verdict: most evaluation samples
    are dropped under `judge_disagrees`, and every judged reply is on disk for --resume."""
    config = SynthConfig(
        problems=str(bench),
        teacher="procedural",
        out=str(tmp_path / "s"),
        limit=6,
        judge="hf:tiny:llama",
        max_new_tokens=4,
    )
    stats = synthesize(config)
    judged = _rows(tmp_path / "s" / "judge_outputs.jsonl")
    assert judged and all(set(row) >= {"pid", "verdict", "text"} for row in judged)
    disagreed = sum(1 for row in judged if row["verdict"] is None)
    assert stats["rejections"]["labeled"].get("judge_disagrees", 0) == disagreed > 0


def test_llama_cpp_path_teacher_and_mmproj_refusal(bench, tmp_path):
    from casseat_edge.errors import ModelSpecError
    from casseat_edge.models import embedded_gguf

    gguf = tmp_path / "models" / "smollm2.gguf"
    gguf.parent.mkdir()
    gguf.symlink_to(embedded_gguf())
    stats = synthesize(
        SynthConfig(
            problems=str(bench),
            teacher=f"llama.cpp:{gguf}",
            out=str(tmp_path / "s"),
            limit=2,
            max_new_tokens=16,
        )
    )
    assert stats["problems"] == 2 and stats["teacher_errors"] == 0
    with pytest.raises(ModelSpecError, match="is not a .gguf file"):
        synthesize(
            SynthConfig(
                problems=str(bench),
                teacher=f"llama.cpp:{tmp_path}/nope.gguf",
                out=str(tmp_path / "t"),
                limit=1,
            )
        )
    assert not (tmp_path / "t").exists()  # nothing to clean up before retrying with a good spec
    (gguf.parent / "mmproj-smollm2.gguf").write_bytes(b"")
    with pytest.raises(ModelSpecError, match="not a readable GGUF mmproj"):  # images: libmtmd
        synthesize(
            SynthConfig(
                problems=str(bench), teacher=f"llama.cpp:{gguf}", out=str(tmp_path / "u"), limit=1
            )
        )


def test_resume_retries_problems_that_errored(bench, tmp_path):
    config = SynthConfig(
        problems=str(bench), teacher="procedural", out=str(tmp_path / "s"), limit=4
    )
    synthesize(config)
    path = tmp_path / "s" / "teacher_outputs.jsonl"
    rows = _rows(path)
    rows[0] = {**rows[0], "stage1": None, "stage2": None, "error": "TimeoutError: slow server"}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        synthesize(SynthConfig(**{**config.to_dict(), "families": (), "resume": True}))[
            "teacher_errors"
        ]
        == 0
    )
    rows = _rows(path)
    assert len(rows) == 5 and rows[-1]["pid"] == rows[0]["pid"] and not rows[-1]["error"]


def test_a_split_nobody_has_is_an_error(bench, tmp_path):
    with pytest.raises(
        ConfigError, match=r"--split val: no problem has that split \(found: test, train\)"
    ):
        synthesize(SynthConfig(problems=str(bench), out=str(tmp_path / "s"), split="val"))


def test_a_resumed_run_writes_what_an_uninterrupted_one_does(bench, tmp_path):
    base = dict(problems=str(bench), teacher="procedural", error_rate=0.4, seed=3)
    synthesize(SynthConfig(**base, out=str(tmp_path / "whole"), limit=40))
    synthesize(SynthConfig(**base, out=str(tmp_path / "parts"), limit=15))  # "interrupted" at 15
    synthesize(SynthConfig(**base, out=str(tmp_path / "parts"), limit=40, resume=True))
    for name in ("samples.jsonl", "heldout.jsonl", "rejected.jsonl", "teacher_outputs.jsonl"):
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "parts" / name
        ).read_bytes(), name
    whole, parts = (
        json.loads((tmp_path / d / "stats.json").read_text()) for d in ("whole", "parts")
    )
    assert {k: v for k, v in whole.items() if k != "throughput"} == {
        k: v for k, v in parts.items() if k != "throughput"
    }
