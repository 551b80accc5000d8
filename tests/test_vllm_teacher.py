"""The vLLM teacher on a CPU machine: spec parsing, engine arguments, request building and output
parsing (the engine itself runs in benchmarks/gpu_vllm_teacher.py on a GPU)."""

from __future__ import annotations

import base64
import types

import pytest
from PIL import Image

from casseat_edge.errors import ConfigError
from casseat_edge.prompts import assistant, stage1_messages, stage2_messages
from training.synth.config import SynthConfig
from training.synth.teachers.base import SynthItem
from training.synth.teachers.vllm import chat_requests, engine_args, parse_outputs, parse_vllm_spec

PROBLEM = {
    "pid": "p1",
    "question": "Value of bar B?",
    "image": "a.png",
    "choices": None,
    "answer": "12",
    "answer_type": "integer",
    "precision": None,
    "unit": None,
    "question_type": "free_form",
    "metadata": {"caption": "Bars A=3, B=12."},
}


def test_spec_options_are_typed_and_checked():
    model, options = parse_vllm_spec(
        "/models/qwen?tensor_parallel_size=2&distributed_executor_backend=ray"
    )
    assert model == "/models/qwen" and options == {
        "tensor_parallel_size": 2,
        "distributed_executor_backend": "ray",
    }
    with pytest.raises(ConfigError, match="unknown option 'tp'; valid: tensor_parallel_size"):
        parse_vllm_spec("/m?tp=2")
    with pytest.raises(ConfigError, match="max_model_len='big' is not a int"):
        parse_vllm_spec("/m?max_model_len=big")
    args = engine_args(model, options, SynthConfig(problems="x", seed=5))
    assert args["enable_prefix_caching"] is True and args["seed"] == 5
    assert args["limit_mm_per_prompt"] == {"image": 1} and args["trust_remote_code"] is False


def test_stage2_request_extends_stage1_with_the_image_first(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    item = SynthItem(PROBLEM, tmp_path / "a.png")
    first = stage1_messages(PROBLEM)
    second = first + [assistant("B is 12.\nFinal answer: 12")] + stage2_messages()
    req1, req2 = chat_requests([first, second], [item, item], captions=False)
    assert req2[: len(req1)] == req1  # same prefix: prefix caching reuses stage 1
    image_part, text_part = req1[0]["content"]
    assert image_part["type"] == "image_url" and text_part["type"] == "text"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == (tmp_path / "a.png").read_bytes()
    (text_only,) = chat_requests([first], [item], captions=True)
    assert text_only[0]["content"].startswith("Image description: Bars A=3, B=12.")


def test_outputs_parse_cached_tokens():
    completion = types.SimpleNamespace(text=" Final answer: 12 \n", token_ids=[5, 6, 7])
    output = types.SimpleNamespace(
        prompt_token_ids=list(range(100)), num_cached_tokens=80, outputs=[completion]
    )
    (generation,) = parse_outputs([output], seconds=2.0)
    assert (
        generation.text,
        generation.prompt_tokens,
        generation.new_prefill_tokens,
        generation.completion_tokens,
    ) == ("Final answer: 12", 100, 20, 3)
