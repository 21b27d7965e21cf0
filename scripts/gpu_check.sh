#!/usr/bin/env bash
# The scale checks that need a GPU (benchmarks/gpu_check.py: bf16/fp32 parity vs transformers on the device, the
# MoE step's HLO per grouped-GEMM lowering, MFU per attention impl), for a lent device machine. Installs nothing:
# the device image carries jax[cuda], flax, optax, transformers and torch. Results: one JSON line per measurement,
# also written to $OUT/gpu_check.jsonl when OUT is set. Arguments go to the script (e.g. --tiny on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
"$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
"$PY" benchmarks/gpu_check.py "$@" | tee "${OUT:-/tmp}/gpu_check.jsonl"
