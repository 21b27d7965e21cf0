#!/usr/bin/env bash
# The offline default, end to end: the full SSD pipeline on the bundled SmolLM2-135M-Instruct (CPU-sized).
#   1. materialise the real model and check the JAX model against transformers (fp32 parity)
#   2. ssd-jax run: evaluate the base model, sample one solution per pool problem at a truncated temperature,
#      drop degenerate samples, fine-tune on them, evaluate the SSD model, compare the two models' token
#      distributions (fork/lock analysis) and write report.md (configs/smollm2-135m-humaneval.yaml)
#   3. check the exported SSD model against transformers again
# Usage: bash scripts/demo.sh [OUT_DIR]   (default runs/demo; rerunning resumes and skips finished stages)
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
OUT="${1:-runs/demo}"
mkdir -p "$OUT"

MODEL="$(ssd-jax bundle smollm2-135m)"
echo "== model: $MODEL"
echo "== parity: JAX vs transformers, fp32, chat-templated prompts, left padding"
ssd-jax parity --hf "$MODEL" --chat --out "$OUT/parity_base.json"
echo "== SSD pipeline (base eval → sample → filter → train → eval → fork/lock analysis)"
ssd-jax run --config configs/smollm2-135m-humaneval.yaml --set out_dir="$OUT"
echo "== parity of the exported SSD model, right padding"
ssd-jax parity --hf "$OUT/round-1/train/export" --padding right --out "$OUT/parity_ssd.json"
echo "== done: $OUT (report.md, manifest.json, summary.json, base-eval/, round-1/)"
echo "   report: $OUT/report.md   fork/lock page: $OUT/round-1/analysis/forklock.html"
