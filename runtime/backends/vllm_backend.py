"""The vllm backend: vLLM's engine on CUDA GPUs, with automatic prefix caching across stages.

vLLM generates whole turns and keeps its own KV cache, so this is a `TurnEngine` driven by
`TurnConversation`: every turn hands vLLM the whole conversation's prompt, and prefix caching
computes only the tokens it has not seen (stage 2: the review turn's own tokens). Prompts are our
token ids (`prompt_token_ids`), rendered through the one preprocessing path with the model's own
chat template and tokenized by our tokenizer without added special tokens (the template holds any
BOS), so they are exactly the ids the other backends evaluate, and stage 2's ids extend stage 1's
prompt + generated ids token for token. For vision models the ids hold the model's unexpanded image
placeholder once (`<image>` for Idefics3, `<|image_pad|>` for Qwen2-VL) and the image rides along
as `multi_modal_data`; vLLM's multimodal processor expands the placeholder in token space (its
"tokenized prompt inputs" path) and hashes the image into the prefix-cache keys. We do not send
rendered text (which vLLM would tokenize itself): the reply's text re-tokenized need not give the
ids the model generated, which would cost cache hits and greedy parity with the other backends.

Cached tokens are vLLM's `num_cached_tokens`. Prefix caching is block-granular (16 tokens by
default): only whole blocks are reused and the last prompt token is always computed, so stage 2's
new prefill exceeds its turn's own tokens by less than a block (plus the stop token stage 1
sampled but never evaluated). TTFT is from submission to the first output holding a token (it
includes vLLM's input processing and the vision encoder, which is not timed apart: `encode_ms` is
None); decode runs from there to the finished output.

Sampling and request building are plain functions, and `TurnTracker` consumes `RequestOutput`s, so
the CPU tests cover them; `VllmEngine.from_llm` wraps an already-built engine object (the tests pass
a stand-in); `benchmarks/gpu_vllm_runtime.py` runs vLLM for real on a GPU.

    cascade = Cascade("/models/Qwen2-VL-2B-Instruct", backend="vllm", dtype="bfloat16")
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casseat_edge.errors import BackendUnavailableError, ConfigError, DataError, ModelSpecError
from casseat_edge.models import ModelRef, resolve_model
from casseat_edge.preprocess import processor_tokenizer
from casseat_edge.registry import BACKENDS
from runtime.backends.base import TokenCallback
from runtime.backends.turns import Generated, TurnEngine, TurnPrompt

EXTRA = "gpu"
HF_KINDS = ("hf", "tiny", "student", "embedded")  # specs that resolve to an HF model directory


def engine_kwargs(
    model_dir: str | Path,
    *,
    vision: bool,
    quant: str | None = None,
    seed: int = 0,
    dtype: str = "auto",
    gpu_memory_utilization: float = 0.5,
    max_model_len: int | None = None,
    enforce_eager: bool = False,
    tensor_parallel_size: int = 1,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`: prefix caching always on, one image per prompt."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "seed": seed,
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": enforce_eager,
        "tensor_parallel_size": tensor_parallel_size,
        "trust_remote_code": trust_remote_code,
        "enable_prefix_caching": True,
    }
    if quant:
        kwargs["quantization"] = quant  # e.g. fp8, bitsandbytes; None: the checkpoint's own
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if vision:
        kwargs["limit_mm_per_prompt"] = {"image": 1}
    return kwargs


def vllm_prompt(prompt: TurnPrompt) -> dict[str, Any]:
    """The request's prompt: our ids, plus the image for a prompt with an image placeholder."""
    request: dict[str, Any] = {"prompt_token_ids": list(prompt.ids)}
    if prompt.image is not None:
        request["multi_modal_data"] = {"image": prompt.image}
    return request


def sampling_kwargs(max_new_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    """`SamplingParams` keywords: greedy at temperature 0; text decoded like our HF decode
    (special tokens kept, no spaces added around them); cumulative outputs (vLLM's default)."""
    return {
        "max_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }


class TurnTracker:
    """Follows one request's cumulative `RequestOutput`s: streams text deltas, times the first
    token and the finish, and reads the token accounting off the finished output."""

    def __init__(self, start: float, on_text: TokenCallback | None = None) -> None:
        self.start, self.on_text = start, on_text
        self.first_at: float | None = None
        self.end_at: float | None = None
        self.sent = ""  # the text streamed so far
        self.last: Any = None

    @property
    def finished(self) -> bool:
        return self.end_at is not None

    def update(self, now: float, output: Any) -> str:
        """Take one output (cumulative: all text and ids so far); the new text piece."""
        completion = output.outputs[0]
        if self.first_at is None and len(completion.token_ids) >= 1:
            self.first_at = now
        text, delta = completion.text, ""
        # only pieces that extend what was sent; a trailing partial UTF-8 character waits
        if text.startswith(self.sent) and (output.finished or not text.endswith("\ufffd")):
            delta, self.sent = text[len(self.sent) :], text
        self.last = output
        if output.finished:
            self.end_at = now
        if delta and self.on_text:
            self.on_text(delta)
        return delta

    def result(self) -> Generated:
        assert self.end_at is not None and self.last is not None, "the request has not finished"
        completion = self.last.outputs[0]
        reason = completion.finish_reason
        if reason not in ("stop", "length"):
            raise DataError(f"vLLM ended the turn with finish_reason {reason!r}; expected stop")
        first = self.first_at if self.first_at is not None else self.end_at
        return Generated(
            text=completion.text,
            streamed=self.sent,
            token_ids=list(completion.token_ids),
            prompt_tokens=len(self.last.prompt_token_ids or []),
            cached_tokens=int(getattr(self.last, "num_cached_tokens", 0) or 0),
            prefill_s=first - self.start,
            decode_s=self.end_at - first,
            finish_reason=reason,
        )


@BACKENDS.register("vllm")
class VllmEngine(TurnEngine):
    """vLLM on CUDA GPUs (HF model directories): prefix caching reuses stage 1 in stage 2."""

    name = "vllm"
    extra_name = EXTRA

    def __init__(
        self,
        model: str | Path | ModelRef,
        quant: str | None = None,  # vLLM's load-time `quantization` (fp8, bitsandbytes, ...)
        threads: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        device: str = "cuda",
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        trust_remote_code: bool = False,
    ) -> None:
        del threads  # taken like every backend's --threads; vLLM's GPU workers have no CPU count
        if device != "cuda":
            raise ConfigError(
                f"the vllm backend runs on CUDA GPUs only, got device={device!r}; on a CPU use "
                "--backend torch, onnxruntime or llama.cpp"
            )
        ref = hf_model_ref(model)
        vllm = _import_vllm()
        kwargs = engine_kwargs(
            ref.path,
            vision=bool(ref.arch.vision),
            quant=quant,
            seed=seed,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            trust_remote_code=trust_remote_code,
        )
        self.llm = vllm.LLM(**kwargs)
        self._setup(self.llm.llm_engine, ref, vllm.SamplingParams, temperature, seed)
        self.quant = quant

    @classmethod
    def from_llm(
        cls,
        llm_engine: Any,
        model: str | Path | ModelRef,
        sampling_params: Callable[..., Any],
        temperature: float = 0.0,
        seed: int = 0,
    ) -> VllmEngine:
        """Wrap an already-built engine object with vLLM's `LLMEngine` contract (`add_request`,
        `step`, `has_unfinished_requests`, `reset_prefix_cache`, `model_config.max_model_len`):
        e.g. `llm.llm_engine` of a `vllm.LLM` the caller configured itself. `sampling_params`
        builds a request's parameters from `sampling_kwargs(...)` (`vllm.SamplingParams`)."""
        engine = cls.__new__(cls)
        engine.llm, engine.quant = None, None
        engine._setup(llm_engine, hf_model_ref(model), sampling_params, temperature, seed)
        return engine

    def _setup(
        self,
        llm_engine: Any,
        ref: ModelRef,
        sampling_params: Callable[..., Any],
        temperature: float,
        seed: int,
    ) -> None:
        TurnEngine.__init__(self, temperature, seed)
        self.llm_engine, self._sampling_params = llm_engine, sampling_params
        self.spec, self.ref, self.arch = ref.spec, ref, ref.arch
        self.processor = ref.arch.load_processor(ref.path)
        self.tokenizer = processor_tokenizer(self.processor)
        self.n_ctx = int(llm_engine.model_config.max_model_len)
        self._request_ids = itertools.count()

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def generate(
        self, prompt: TurnPrompt, max_new_tokens: int, on_text: TokenCallback | None, reuse: bool
    ) -> Generated:
        if not reuse and self.llm_engine.reset_prefix_cache() is False:
            raise DataError("vLLM could not empty its prefix cache (requests still running)")
        params = self._sampling_params(
            **sampling_kwargs(max_new_tokens, self.temperature, self.seed)
        )
        request_id = f"casseat-{next(self._request_ids)}"
        tracker = TurnTracker(time.perf_counter(), on_text)
        try:
            self.llm_engine.add_request(request_id, vllm_prompt(prompt), params)
        except ValueError as exc:  # vLLM's own checks, e.g. a prompt longer than max_model_len
            reason = (str(exc).splitlines() or [exc.__class__.__name__])[0]
            raise DataError(
                f"vLLM refused the prompt ({reason}); lower max_new_tokens, shorten the question "
                "or raise max_model_len"
            ) from None
        while not tracker.finished:
            outputs = self.llm_engine.step()
            now = time.perf_counter()
            for output in outputs:  # one request in flight: every output is this turn's
                tracker.update(now, output)
            if not outputs and not self.llm_engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM dropped request {request_id} without finishing it")
        return tracker.result()

    def model_bytes(self) -> int:
        return sum(p.stat().st_size for p in Path(self.ref.path).glob("*.safetensors"))

    def close(self) -> None:
        core = getattr(getattr(self, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()  # vLLM's engine core process holds the GPU memory
        self.llm = self.llm_engine = None


def hf_model_ref(model: str | Path | ModelRef) -> ModelRef:
    """The spec resolved to an HF model directory; GGUF files and ONNX exports are refused."""
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    if ref.kind not in HF_KINDS or ref.arch is None:
        raise ModelSpecError(
            f"{ref.spec}: the vllm backend needs an HF model directory (config.json + "
            f"safetensors), got {ref.kind!r}; pass the HF directory it was exported from, or "
            "use --backend llama.cpp / onnxruntime for it"
        )
    return ref


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise BackendUnavailableError(
            f"the vllm backend needs vLLM and a CUDA GPU; install the extra: "
            f"pip install 'casseat-edge[{EXTRA}]'"
        ) from None
    return vllm
