"""The deployment formats, shared by the exporters that write them and the runtime that runs them:

- `mtmd`: our one llama.cpp + libmtmd driver (`LlamaSession`): a text GGUF and its mmproj as one
  KV sequence we steer ourselves; the runtime's llama.cpp backend, the llama.cpp teacher and the
  GGUF exporter's verification all run models through it;
- `onnx_split`: the ONNX export layout (transformers.js' split vision / embeddings / decoder
  graphs) and its runner.

Native libraries (llama_cpp, onnxruntime) are imported when a model is opened, so the core
imports without them.
"""
