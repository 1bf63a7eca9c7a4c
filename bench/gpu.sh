#!/usr/bin/env bash
# The GPU checks in one run (bench/gpu.py says what they are); about 6 minutes on one H200.
# Run from the repository root on a machine with a GPU, JAX with CUDA and (for the PyTorch
# columns) CUDA torch: bash bench/gpu.sh [OUT_DIR]. Packages the machine lacks may be carried
# as wheels in .whl/ (e.g. grain, tensorboardX); they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench}}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/gpu.py --json "$out/gpu.json"
