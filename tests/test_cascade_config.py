"""`CascadeConfig`, the one config of a cascade: frozen, each bad value a one-line `ConfigError`
naming its flag, a round trip through `to_dict` and YAML, the `run` command's flags generated from
it, `EvalConfig` deriving it (its own flags and manifest keys unchanged), and `Cascade` taking it
(or keywords that build it)."""

from __future__ import annotations

import dataclasses
import json
from typing import get_args

import pytest
import yaml
from click.testing import CliRunner

from casseat_cli.cli import main, run
from casseat_edge.config import load_config
from casseat_edge.errors import ConfigError, UnknownNameError
from casseat_edge.prompts import POLICIES, Policy
from runtime import Cascade
from runtime.backends.torch_backend import TorchEngine
from runtime.config import CascadeConfig
from runtime.evaluate import EvalConfig
from runtime.policies import POLICY_FUNCTIONS

PROBLEM = {"answer": "12", "answer_type": "integer", "caption": "A rectangle 3 wide, 4 tall."}


@pytest.fixture(scope="module")
def tiny_llama() -> TorchEngine:
    return TorchEngine("tiny:llama")


def test_config_is_frozen_and_its_policies_are_the_prompts_policies() -> None:
    config = CascadeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.policy = "cot"  # type: ignore[misc]
    assert get_args(Policy) == POLICIES == tuple(POLICY_FUNCTIONS)
    assert config.backend_options() == {}  # unset options: each backend keeps its own default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policy": "best"}, r"policy \(--policy\): expected one of: direct, cot, seat, cas-seat,"),
        ({"max_new_tokens": 0}, "--max-new-tokens: expected >= 1, found 0"),
        ({"max_new_tokens": "5"}, r"max_new_tokens \(--max-new-tokens\): expected an integer"),
        ({"max_refine_rounds": -1}, "--max-refine-rounds: expected >= 0, found -1"),
        ({"threads": 100000}, "--threads: expected 1 to"),
        ({"threads": -3}, "--threads: expected 1 to"),
        ({"captions": "yes"}, r"captions \(--captions\): expected true or false"),
        ({"temperature": -0.5}, "--temperature: expected >= 0, found -0.5"),
        ({"backend": "onnx"}, "--backend: unknown backend 'onnx'; expected one of: llama.cpp,"),
        ({"n_ctx": 2048}, "--n-ctx: not an option of the torch backend, which takes --threads,"),
        ({"backend": "llama.cpp", "quant": "int8"}, "--quant: not an option of the llama.cpp"),
    ],
)
def test_each_bad_value_is_one_line_naming_its_flag(values, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        CascadeConfig(**values)
    assert "\n" not in str(error.value)


def test_unknown_backend_is_an_unknown_name_error() -> None:
    with pytest.raises(UnknownNameError):
        CascadeConfig(backend="onnx")


def test_backend_options_are_the_set_ones_under_the_backends_keywords() -> None:
    config = CascadeConfig(backend="llama.cpp", n_ctx=2048, threads=1, policy="cot")
    assert config.backend_options() == {"n_ctx": 2048, "threads": 1}
    config = CascadeConfig(backend="onnxruntime", quant="int8", device="cpu")
    assert config.backend_options() == {"quant": "int8", "device": "cpu"}


def test_round_trip_through_dict_and_yaml(tmp_path) -> None:
    for config in (
        CascadeConfig(),
        CascadeConfig(backend="llama.cpp", policy="cas-seat-refine", max_refine_rounds=2,
                      kv_reuse=False, captions=True, threads=1, n_ctx=1024, temperature=0.5,
                      seed=3),
    ):  # fmt: skip
        assert CascadeConfig(**config.to_dict()) == config
        path = tmp_path / "cascade.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        assert load_config(CascadeConfig, path) == config
    # flag > YAML > default
    path.write_text("policy: cot\nmax-new-tokens: 32\n")
    loaded = load_config(CascadeConfig, path, {"max_new_tokens": 8})
    assert (loaded.policy, loaded.max_new_tokens, loaded.backend) == ("cot", 8, "torch")
    path.write_text("policy: cot\nmax_tokens: 32\nbeam: 2\n")
    with pytest.raises(ConfigError, match="unknown key.s. beam, max_tokens for CascadeConfig"):
        load_config(CascadeConfig, path)


def test_run_flags_are_the_config_fields() -> None:
    own = {"config_file", "model_spec", "image", "question", "caption", "choices", "answer",
           "answer_type", "as_json"}  # fmt: skip
    generated = {p.name: p for p in run.params if p.name not in own}
    fields = {f.name: f for f in dataclasses.fields(CascadeConfig)}
    assert generated.keys() == fields.keys()
    for name, param in generated.items():
        assert fields[name].metadata["help"] in param.help
    assert tuple(generated["policy"].type.choices) == POLICIES
    assert "--no-kv-reuse" in generated["kv_reuse"].secondary_opts  # the flag run always had


def test_eval_config_derives_the_cascade_config_with_its_own_keys() -> None:
    eval_config = EvalConfig(bench="b", policy="cot", max_new_tokens=9, captions="on", threads=1)
    assert eval_config.cascade_config() == CascadeConfig(
        policy="cot", max_new_tokens=9, captions=True, threads=1
    )
    # the manifest's keys (what --resume and the pipeline's stamps compare)
    assert list(eval_config.to_dict()) == [
        "model", "bench", "out", "backend", "policy", "split", "limit", "max_new_tokens", "quant",
        "captions", "name", "threads", "draft_tokens", "resume",
    ]  # fmt: skip
    assert EvalConfig(bench="b", draft_tokens=0).cascade_config().draft_tokens == 0
    for name in ("backend", "policy", "max_new_tokens", "threads", "draft_tokens"):
        shared = EvalConfig.__dataclass_fields__[name]
        assert shared.default == CascadeConfig.__dataclass_fields__[name].default
    # --quant loads a variant where the backend takes one; elsewhere it only labels the report
    assert (
        EvalConfig(bench="b", backend="onnxruntime", quant="int8").cascade_config().quant == "int8"
    )
    assert EvalConfig(bench="b", backend="llama.cpp", quant="q4_k_m").cascade_config().quant == ""
    with pytest.raises(ConfigError, match="--max-new-tokens: expected >= 1"):
        EvalConfig(bench="b", max_new_tokens=0)


def test_cascade_takes_a_config_or_keywords_that_build_one(tiny_llama) -> None:
    config = CascadeConfig(policy="cot", max_new_tokens=3)
    by_config = Cascade(tiny_llama, config)
    by_keywords = Cascade(tiny_llama, policy="cot", max_new_tokens=3)
    assert by_config.config == by_keywords.config == config
    assert Cascade(tiny_llama, config, policy="direct").config.policy == "direct"
    one = by_config.solve(None, "What is the area?", **PROBLEM)
    other = by_keywords.solve(None, "What is the area?", **PROBLEM)
    assert [s.text for s in one.stages] == [s.text for s in other.stages]
    assert one.options == {"max_new_tokens": 3, "captions": False, "draft_tokens": 8}
    with pytest.raises(ConfigError, match="unknown option.s. beams, max_tokens; expected some"):
        Cascade(tiny_llama, max_tokens=3, beams=2)
    with pytest.raises(ConfigError, match="config must be a CascadeConfig, found str"):
        Cascade(tiny_llama, "llama.cpp")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--threads: the engine is already open"):
        Cascade(tiny_llama, threads=1)


def test_run_reads_a_config_file_and_flags_override_it(tmp_path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text("policy: cot\nmax_new_tokens: 3\n")
    args = ["run", "--model", "tiny:llama", "--config", str(path), "--question", "Area?",
            "--caption", "A 3 by 4 rectangle.", "--json"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["policy"] == "cot" and [s["name"] for s in doc["stages"]] == ["stage1"]
    assert doc["options"]["max_new_tokens"] == 3
    out = CliRunner().invoke(main, [*args, "--policy", "direct", "--no-kv-reuse"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["policy"] == "direct" and doc["kv_reuse"] is False


def test_run_refuses_an_option_its_backend_does_not_take() -> None:
    args = ["run", "--model", "tiny:llama", "--question", "Area?", "--n-ctx", "512"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert out.stderr.strip() == (
        "error: --n-ctx: not an option of the torch backend, which takes --threads, --device, "
        "--dtype, --temperature, --seed"
    )
