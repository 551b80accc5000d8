"""Exporters for edge runtimes, verified against the source model; each registers in
`casseat_edge.registry.EXPORTERS` on import.

- `export.gguf` ("gguf"): our own converter on the `gguf` package — text model (llama: SmolLM2,
  tiny:llama, the Idefics3 text tower; qwen2; the Qwen2-VL text tower at library level only, its
  mmproj is not written yet) with its byte-level BPE tokenizer and chat template, an `idefics3`
  mmproj for SmolVLM, llama.cpp's quantizer for every common type (q8_0, q4_k_m, ...), and
  verification through llama-cpp-python (logits, tokenizer ids, generation, libmtmd "vision
  survived"). `casseat-edge export --format gguf`.
- `export.onnx` ("onnx"): the layout onnx-community / transformers.js use (text models: one
  merged `model.onnx`; VLMs: `vision_encoder` / `embed_tokens` / `decoder_model_merged`, with
  past_key_values; quantized files `_int8` / `_q4`) traced with
  torch.onnx for Llama, Qwen2, Idefics3/SmolVLM and Qwen2-VL (M-RoPE position ids), fp32 plus
  onnxruntime's dynamic int8 and MatMulNBits int4, verified in onnxruntime against PyTorch.
  `casseat-edge export --format onnx`; served by the `onnxruntime` runtime backend.
"""

from __future__ import annotations

from export import gguf, onnx  # noqa: F401  (register the exporters and their quant types)
