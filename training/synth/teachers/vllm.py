"""The scale-out teacher, `vllm:MODEL[?option=value&...]`: vLLM's offline engine on GPUs.

Prefix caching is on, and every conversation puts the image first and then the question, so the
stage-2 prompt (stage-1 conversation + reply + review turn) shares its whole prefix, image
included, with stage 1 and only the new tokens are computed. Engine options pass through the spec:
`tensor_parallel_size`, `data_parallel_size`, `pipeline_parallel_size`, `max_model_len`,
`gpu_memory_utilization`, `dtype`, `distributed_executor_backend` (`ray` for several nodes), e.g.
`vllm:/models/Qwen2-VL-7B-Instruct?tensor_parallel_size=2&max_model_len=8192`.

vLLM needs a CUDA GPU (extra `gpu`); request building and result parsing are plain functions that
the CPU tests cover, and `benchmarks/gpu_vllm_teacher.py` runs the engine for real.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from casseat_edge.errors import BackendUnavailableError, ConfigError
from casseat_edge.preprocess import to_text_only
from casseat_edge.registry import TEACHERS
from training.synth.teachers.base import ChatTeacher, Generation, SynthItem
from training.synth.teachers.openai import openai_message

ENGINE_OPTIONS: dict[str, type] = {
    "tensor_parallel_size": int,
    "data_parallel_size": int,
    "pipeline_parallel_size": int,
    "max_model_len": int,
    "gpu_memory_utilization": float,
    "dtype": str,
    "distributed_executor_backend": str,
    "captions": bool,  # ours, not vLLM's: a text-only model reads the caption
}


def parse_vllm_spec(argument: str) -> tuple[str, dict[str, Any]]:
    """`MODEL?key=value&...` -> (model, typed options); unknown keys are errors listing the valid."""
    model, _, query = argument.partition("?")
    if not model:
        raise ConfigError(
            "teacher 'vllm:': name a model directory, e.g. vllm:/models/Qwen2-VL-7B-Instruct"
        )
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in ENGINE_OPTIONS:
            raise ConfigError(
                f"vllm teacher: unknown option {key!r}; valid: {', '.join(ENGINE_OPTIONS)}"
            )
        kind = ENGINE_OPTIONS[key]
        try:
            options[key] = (
                value.lower() in ("1", "true", "yes", "") if kind is bool else kind(value)
            )
        except ValueError:
            raise ConfigError(
                f"vllm teacher: option {key}={value!r} is not a {kind.__name__}"
            ) from None
    return model, options


def engine_args(model: str, options: dict[str, Any], config: Any) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`: prefix caching always on, one image per prompt."""
    args = {k: v for k, v in options.items() if k != "captions"}
    args.update(
        model=model,
        enable_prefix_caching=True,
        seed=config.seed,
        trust_remote_code=bool(config.trust_remote_code),
    )
    if not options.get("captions"):
        args["limit_mm_per_prompt"] = {"image": 1}
    return args


def chat_requests(
    conversations: list[list[dict[str, Any]]], items: list[SynthItem], captions: bool
) -> list[list[dict[str, Any]]]:
    """OpenAI-format message lists for `LLM.chat`: image parts as data URLs, or the caption."""
    requests, images = [], {}
    for conversation, item in zip(conversations, items):
        if captions:
            requests.append(to_text_only(conversation, item.caption))
        else:
            requests.append([openai_message(m, item, images) for m in conversation])
    return requests


def parse_outputs(outputs: list[Any], seconds: float) -> list[Generation]:
    """`vllm.RequestOutput`s -> Generations; cached prompt tokens come from `num_cached_tokens`."""
    results = []
    for out in outputs:
        prompt = len(out.prompt_token_ids or [])
        cached = int(getattr(out, "num_cached_tokens", 0) or 0)
        completion = out.outputs[0]
        results.append(
            Generation(
                text=completion.text.strip(),
                prompt_tokens=prompt,
                new_prefill_tokens=max(0, prompt - cached),
                completion_tokens=len(completion.token_ids),
                seconds=seconds / max(1, len(outputs)),
            )
        )
    return results


class VLLMTeacher(ChatTeacher):
    """vLLM offline batch engine with prefix caching (GPU; tensor/data parallel, Ray)."""

    prefix = "vllm"
    spec_help = "vllm:MODEL[?tensor_parallel_size=N&data_parallel_size=N&...]"

    def __init__(self, spec: str, argument: str, config: Any) -> None:
        super().__init__(spec, argument, config)
        model, options = parse_vllm_spec(argument)
        self.captions = bool(options.get("captions"))
        self.sees_images = not self.captions
        self.batch_size = max(config.batch_size, 64)  # the engine schedules large batches itself
        try:
            import vllm
        except ImportError:
            raise BackendUnavailableError(
                "the vllm teacher needs vLLM and a CUDA GPU; install the extra: "
                "pip install 'casseat-edge[gpu]'"
            ) from None
        if not Path(model).exists():
            raise ConfigError(
                f"vllm teacher: {model} not found; pass a local model directory (no downloads)"
            )
        self.llm = vllm.LLM(**engine_args(model, options, config))
        self.sampling = vllm.SamplingParams(
            max_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed
        )

    def generate(
        self, conversations: list[list[dict[str, Any]]], items: list[SynthItem]
    ) -> list[Generation]:
        start = time.perf_counter()
        outputs = self.llm.chat(
            chat_requests(conversations, items, self.captions), self.sampling, use_tqdm=False
        )
        return parse_outputs(outputs, time.perf_counter() - start)


TEACHERS.register("vllm")(VLLMTeacher)
