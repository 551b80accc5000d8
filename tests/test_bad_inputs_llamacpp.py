"""Bad inputs to the llama.cpp backend, replayed through the CLI: each ends with one `error:` line
on stderr and the documented exit code (1 runtime, 2 usage), never a traceback, hang or crash.

Every case runs in a subprocess: several used to kill the process (SIGSEGV for --threads 100000,
SIGABRT in libmtmd for a crafted mmproj, a freed model after close), and a regression must fail
its test rather than take pytest down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import has_module
from tests.tiny_exports import exported_gguf

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


def casseat(*args: str) -> subprocess.CompletedProcess[str]:
    """`casseat-edge ARGS` in a fresh interpreter (this checkout's code)."""
    code = "from casseat_cli.cli import main; main()"
    return _python(["-c", code, *args])


def _python(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT,
        env=env,
    )  # fmt: skip


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, match: str) -> None:
    """Exit `code` (a signal shows as a negative code), stderr exactly one `error:` line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def smolvlm() -> tuple[Path, Path]:
    return exported_gguf("tiny:smolvlm")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    result = casseat("bench", "make", "--out", str(out), "--n", "1", "--seed", "0", "--json")
    assert result.returncode == 0, result.stderr
    return out


def eval_args(model: Path, bench: Path, out: Path, threads: str = "1") -> list[str]:
    return ["eval", "--model", str(model), "--bench", str(bench), "--split", "", "--out", str(out),
            "--backend", "llama.cpp", "--threads", threads, "--max-new-tokens", "2"]  # fmt: skip


def run_args(model: Path, image: Path | None, *extra: str) -> list[str]:
    args = ["run", "--backend", "llama.cpp", "--model", str(model), "--question", "What is 2+3?"]
    args += ["--max-new-tokens", "2", "--threads", "1", *extra]
    return args + (["--image", str(image)] if image else [])


def model_with_mmproj(tmp_path: Path, text_gguf: Path, mmproj: bytes) -> Path:
    """A directory with the text GGUF and the given bytes as its `mmproj-*.gguf` sibling."""
    (tmp_path / "model-f32.gguf").symlink_to(text_gguf)
    (tmp_path / "mmproj-f32.gguf").write_bytes(mmproj)
    return tmp_path / "model-f32.gguf"


def rewrite_gguf(src: Path, dst: Path, fields=None, tensors=None, drop=()) -> None:
    """Copy a GGUF with some key values or tensors replaced (or dropped): a crafted file."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    fields, tensors = fields or {}, tensors or {}
    reader = GGUFReader(str(src))
    writer = GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = fields.get(key, field.contents())
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.name not in drop:
            writer.add_tensor(tensor.name, tensors.get(tensor.name, np.array(tensor.data)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---- the text GGUF
@pytest.mark.parametrize(
    "damage, match",
    [("truncated", "llama.cpp could not load this GGUF"), ("random", "not a readable GGUF model")],
)
@pytest.mark.parametrize("command", ["run", "eval"])
def test_damaged_gguf(smolvlm, image, bench, tmp_path, damage, match, command) -> None:
    data = smolvlm[0].read_bytes()
    bad = tmp_path / "model.gguf"
    rng = np.random.default_rng(0)
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else rng.bytes(8192))
    if command == "run":
        result = casseat(*run_args(bad, image))
    else:
        result = casseat(*eval_args(bad, bench, tmp_path / "eval"))
    assert_one_error_line(result, 1, match)


# ---- the mmproj
def _narrow_projector(mmproj: Path, dst: Path) -> None:
    """A well-formed idefics3 mmproj whose projector gives 32-wide embeddings (the text model
    is 64 wide): a mmproj made for another text model."""
    from gguf import GGUFReader

    (fc,) = [t for t in GGUFReader(str(mmproj)).tensors if t.name == "mm.model.fc.weight"]
    narrow = np.array(fc.data)[:32].copy()
    fields = {"clip.vision.projection_dim": 32}
    rewrite_gguf(mmproj, dst, fields, {"mm.model.fc.weight": narrow})


CRAFTED = {  # name -> (how the file is crafted, the error it must give)
    "patch size": ({"fields": {"clip.vision.patch_size": 8}}, "v.patch_embd.weight is"),
    "head count": ({"fields": {"clip.vision.attention.head_count": 3}}, "64 wide / 3 heads"),
    "merge": ({"fields": {"clip.vision.projector.scale_factor": 3}}, "64 wide / 2 heads"),
    "no projector": ({"drop": ("mm.model.fc.weight",)}, "mm.model.fc.weight is None"),
    "image size": ({"fields": {"clip.vision.image_size": 4096}}, "v.position_embd.weight is"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_mmproj_is_refused_before_libmtmd_aborts(smolvlm, image, tmp_path, case) -> None:
    """These used to end in GGML_ASSERT (SIGABRT) inside mtmd_init_from_file."""
    crafted = tmp_path / "crafted.gguf"
    how, match = CRAFTED[case]
    rewrite_gguf(smolvlm[1], crafted, **how)
    (tmp_path / "m").mkdir()
    model = model_with_mmproj(tmp_path / "m", smolvlm[0], crafted.read_bytes())
    assert_one_error_line(casseat(*run_args(model, image)), 1, f"inconsistent mmproj ({match}")


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncated", "not a readable GGUF mmproj"),
        ("random", "not a readable GGUF mmproj"),
        ("mismatched", "libmtmd could not load this mmproj"),
        ("another model's", "no single '<|image_pad|>' token"),
    ],
)
def test_bad_mmproj(smolvlm, image, bench, tmp_path, damage, match) -> None:
    data = smolvlm[1].read_bytes()
    if damage == "truncated":
        data = data[: len(data) * 9 // 10]
    elif damage == "random":
        data = np.random.default_rng(1).bytes(4096)
    elif damage == "mismatched":
        _narrow_projector(smolvlm[1], tmp_path / "narrow.gguf")
        data = (tmp_path / "narrow.gguf").read_bytes()
    else:
        data = exported_gguf("tiny:qwen2vl")[1].read_bytes()
    (tmp_path / "m").mkdir()
    model = model_with_mmproj(tmp_path / "m", smolvlm[0], data)
    assert_one_error_line(casseat(*run_args(model, image)), 1, match)
    result = casseat(*eval_args(model, bench, tmp_path / "eval"))
    assert_one_error_line(result, 1, match)


# ---- flags
@pytest.mark.parametrize("threads", ["-1", "100000"])  # 100000 was a SIGSEGV in ggml
def test_threads_out_of_range_is_a_usage_error(smolvlm, image, bench, tmp_path, threads) -> None:
    args = run_args(smolvlm[0], image)
    args[args.index("--threads") + 1] = threads
    assert_one_error_line(casseat(*args), 2, f"--threads: expected 1 to {4 * os.cpu_count()}")
    result = casseat(*eval_args(smolvlm[0], bench, tmp_path / "eval", threads))
    assert_one_error_line(result, 2, "--threads")


def test_negative_n_ctx_is_a_usage_error(smolvlm, bench, tmp_path) -> None:
    """`--n-ctx` is a flag of synth (llama.cpp teachers); the session refuses it too."""
    result = casseat("synth", "--problems", str(bench), "--teacher", str(smolvlm[0]), "--out",
                     str(tmp_path / "synth"), "--n-ctx", "-1", "--threads", "1")  # fmt: skip
    assert_one_error_line(result, 2, "--n-ctx")
    code = f"""
        from casseat_edge.errors import ConfigError
        from casseat_edge.formats.mtmd import LlamaSession
        try:
            LlamaSession({str(smolvlm[0])!r}, n_ctx=-1, threads=1)
        except ConfigError as exc:
            print(exc)
    """
    result = _python(["-c", textwrap.dedent(code)])
    assert result.returncode == 0 and "n_ctx and n_batch: must be >= 1" in result.stdout


def test_n_ctx_is_capped_at_the_trained_context(smolvlm) -> None:
    from casseat_edge.formats.mtmd import LlamaSession, gguf_context_length

    trained = gguf_context_length(smolvlm[0])
    assert trained == 4096  # the export writes llama.context_length (llama.cpp: n_ctx_train)
    session = LlamaSession(smolvlm[0], n_ctx=2 * trained, threads=1)
    try:
        assert session.n_ctx == trained and session.n_ctx_train == trained
    finally:
        session.close()


# ---- use
def test_vision_gguf_without_image_answers_the_text(smolvlm) -> None:
    """No --image: the prompt has no image part (as on torch); it used to load_image(None)."""
    import json

    result = casseat(*run_args(smolvlm[0], None, "--json", "--policy", "direct"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (stage,) = json.loads(result.stdout)["stages"]
    assert stage["encode_ms"] is None or stage["encode_ms"] == 0


def test_solve_after_close_is_an_error_not_a_crash(smolvlm, image) -> None:
    code = f"""
        from casseat_edge.errors import CasseatError
        from runtime import Cascade
        cascade = Cascade({str(smolvlm[0])!r}, backend="llama.cpp", max_new_tokens=2, threads=1)
        cascade.close()
        cascade.close()  # idempotent
        try:
            cascade.solve({str(image)!r}, "What is 2+3?")
        except CasseatError as exc:
            print("error:", exc)
    """
    result = _python(["-c", textwrap.dedent(code)])
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "this llama.cpp session is closed" in result.stdout


@pytest.mark.parametrize("threads", ["-3", "100000"])  # torch: a traceback / OpenBLAS abort
def test_threads_out_of_range_on_the_torch_backend(threads) -> None:
    args = ["run", "--model", "tiny:llama", "--backend", "torch", "--question", "2 + 2?",
            "--caption", "none", "--max-new-tokens", "2", "--threads", threads]  # fmt: skip
    assert_one_error_line(casseat(*args), 2, f"--threads: expected 1 to {4 * os.cpu_count()}")
