#!/usr/bin/env bash
# Install into .venv if needed, then run the whole test suite (slow real-model tests included).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
python -m pytest -q "$@"
