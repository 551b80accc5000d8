"""The onnxruntime backend on our split ONNX exports of the tiny models: greedy cas-seat gives the
torch backend's tokens (fp32), stage 2 prefills only its own tokens through the past key/values,
the quantized variants run, and `casseat-edge run --backend onnxruntime` works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casseat_cli.cli import main
from casseat_edge.config import load_config
from casseat_edge.errors import BackendUnavailableError, ModelSpecError
from casseat_edge.prompts import assistant, stage1_messages, stage2_messages
from runtime import Cascade
from runtime.backends import Conversation
from runtime.backends.torch_backend import TorchEngine
from tests.conftest import has_module
from tests.test_runtime import PROBLEM, _image, _own_tokens

pytestmark = pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime")
TINY = ["tiny:llama", "tiny:smolvlm", "tiny:qwen2vl"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 exports of every tiny model (fp32 + int4 for tiny:smolvlm), unverified: the
    exporter's own tests verify them; here the runtime is compared with the torch backend."""
    from export.onnx import OnnxExportConfig, export_onnx

    root = tmp_path_factory.mktemp("ort")
    out = {}
    for model in TINY:
        quant = ("fp32", "int4") if model == "tiny:smolvlm" else ("fp32",)
        values = {"model": model, "out": str(root / model[5:]), "quant": quant, "verify": False}
        export_onnx(load_config(OnnxExportConfig, overrides=values))
        out[model] = root / model[5:]
    return out


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "bars.png"
    image = Image.new("RGB", (90, 60), (240, 240, 240))
    image.paste((200, 20, 20), (10, 20, 30, 60))
    image.paste((20, 20, 200), (50, 5, 70, 60))
    path_str = str(path)
    image.save(path_str)
    return path_str


def _solve(engine, image_path: str, reuse: bool = True):
    cascade = Cascade(engine, max_new_tokens=16, kv_reuse=reuse)
    return cascade.solve(image_path if engine.vision else None, "What is the area?", **PROBLEM)


@pytest.mark.parametrize("model", TINY)
def test_greedy_cas_seat_equals_torch(model: str, exports, image_path: str) -> None:
    from runtime.backends.onnxruntime_backend import OrtEngine

    ort_result = _solve(OrtEngine(exports[model]), image_path)
    torch_result = _solve(TorchEngine(model), image_path)
    assert [s.name for s in ort_result.stages] == ["stage1", "stage2"]
    assert [s.text for s in ort_result.stages] == [s.text for s in torch_result.stages]
    for ours, theirs in zip(ort_result.stages, torch_result.stages):
        assert ours.prompt_tokens == theirs.prompt_tokens
        assert ours.new_prefill_tokens == theirs.new_prefill_tokens
    assert ort_result.backend == "onnxruntime"


@pytest.mark.parametrize("model", TINY)
def test_stage2_prefills_only_its_own_tokens(model: str, exports, image_path: str) -> None:
    from runtime.backends.onnxruntime_backend import OrtEngine

    engine = OrtEngine(exports[model])
    image = _image(engine, image_path)
    problem = {"question": "What is the area?", "answer_type": "integer", "image": "x"}
    conversation = Conversation(engine)
    first = stage1_messages(problem)
    out1 = conversation.turn(first, image, PROBLEM["caption"], max_new_tokens=8)
    second = [*first, assistant(out1.raw_text), *stage2_messages()]
    out2 = conversation.turn(second, image, PROBLEM["caption"], max_new_tokens=8)
    pending = 1 if out1.stop_reason == "length" else 0
    assert out2.new_prefill_tokens == _own_tokens(engine, first, second, out1.raw_text) + pending
    assert out2.reused_tokens == out1.prompt_tokens + out1.completion_tokens - 1
    assert engine.past is not None and engine.past[0].shape[2] == len(engine.ids)


def test_kv_reuse_changes_no_token_and_vision_is_timed(exports, image_path: str) -> None:
    from runtime.backends.onnxruntime_backend import OrtEngine

    engine = OrtEngine(exports["tiny:qwen2vl"])
    reused, fresh = _solve(engine, image_path), _solve(engine, image_path, reuse=False)
    assert [s.text for s in reused.stages] == [s.text for s in fresh.stages]
    s2, f2 = reused.stage("stage2"), fresh.stage("stage2")
    assert s2.new_prefill_tokens < f2.new_prefill_tokens == f2.prompt_tokens
    assert reused.stages[0].encode_ms > 0 and s2.encode_ms == 0


def test_quant_variant_is_chosen_and_sized(exports, image_path: str) -> None:
    from runtime.backends.onnxruntime_backend import OrtEngine

    fp32, int4 = OrtEngine(exports["tiny:smolvlm"]), OrtEngine(exports["tiny:smolvlm"], "int4")
    assert fp32.quant == "fp32" and int4.quant == "int4"
    assert int4.model_bytes() < fp32.model_bytes() / 3
    result = _solve(int4, image_path)
    assert all(s.completion_tokens > 0 for s in result.stages)
    with pytest.raises(ModelSpecError, match="no 'int8' variant; this export has: fp32, int4"):
        OrtEngine(exports["tiny:smolvlm"], "int8")


def test_wrong_specs_and_missing_providers(exports, monkeypatch) -> None:
    from runtime.backends.onnxruntime_backend import OrtEngine

    with pytest.raises(ModelSpecError, match="needs an ONNX export directory"):
        OrtEngine("tiny:llama")
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(BackendUnavailableError, match=r"casseat-edge\[gpu\]"):
            OrtEngine(exports["tiny:llama"], device="cuda")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match="onnxruntime is not installed"):
        OrtEngine(exports["tiny:llama"])


def test_cli_run_with_onnxruntime_backend(exports, image_path: str) -> None:
    args = ["run", "--model", str(exports["tiny:smolvlm"]), "--backend", "onnxruntime",
            "--image", image_path, "--question", "What is the area?", "--max-new-tokens", "5",
            "--json"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["backend"] == "onnxruntime" and [s["name"] for s in doc["stages"]] == [
        "stage1",
        "stage2",
    ]
    assert doc["stages"][1]["new_prefill_tokens"] < doc["stages"][1]["prompt_tokens"]
    bad = CliRunner().invoke(main, ["run", "--model", "tiny:llama", "--backend", "onnxruntime",
                                    "--question", "Area?", "--caption", "x"])  # fmt: skip
    assert bad.exit_code == 1 and "export --format onnx" in bad.stderr


@pytest.mark.slow
def test_smollm2_fp32_cascade_equals_torch(tmp_path) -> None:
    """The real packaged model: greedy cas-seat on our fp32 export gives torch's tokens."""
    from export.onnx import OnnxExportConfig, export_onnx

    out = tmp_path / "smollm2"
    values = {"model": "embedded:smollm2-135m-instruct", "out": str(out), "verify": False}
    export_onnx(load_config(OnnxExportConfig, overrides=values))
    texts = {}
    for backend, model in (("onnxruntime", str(out)), ("torch", values["model"])):
        with Cascade(model, backend=backend, max_new_tokens=24) as cascade:
            result = cascade.solve(None, "What is the area of the rectangle?", **PROBLEM)
        texts[backend] = [s.text for s in result.stages]
    assert texts["onnxruntime"] == texts["torch"]
