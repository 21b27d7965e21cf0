#!/usr/bin/env bash
# The offline default, end to end as far as ssd-jax goes today: materialise the real SmolLM2-135M-Instruct,
# check the JAX model against transformers, convert HF → orbax → HF, and check the exported model again.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
OUT="${1:-runs/demo}"
mkdir -p "$OUT"

MODEL="$(ssd-jax bundle smollm2-135m)"
echo "== model: $MODEL"
echo "== parity, fp32, chat-templated prompts, left padding"
ssd-jax parity --hf "$MODEL" --chat --out "$OUT/parity.json"
echo "== convert HF → orbax → HF"
ssd-jax convert "$MODEL" "$OUT/orbax"
ssd-jax convert "$OUT/orbax" "$OUT/export"
echo "== parity of the exported directory, right padding"
ssd-jax parity --hf "$OUT/export" --padding right --out "$OUT/parity_export.json"
echo "== done: reports in $OUT"
