#!/usr/bin/env bash
# The sandbox and zygote tests from copies of the checkout under /tmp and under a path with a space, each run by an
# interpreter that lives there too (a venv layered over .venv): the grader's sandbox replaces /tmp with a private
# one and must bind back what it needs from wherever the interpreter and the work live. `.ci/run` runs this after
# the suite. Usage: bash scripts/test_elsewhere.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
base_site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for dest in "/tmp/ssd-jax-elsewhere-$$" "/tmp/ssd jax elsewhere $$"; do
  rm -rf "$dest"
  mkdir -p "$dest"
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$dest"
  python -m venv --without-pip "$dest/.venv"
  site="$("$dest/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # .venv's packages under the copy's own interpreter: a path line (what the sandbox's site handling reads) and
  # site.addsitedir for .venv's own .pth hooks on the host side
  printf '%s\nimport site; site.addsitedir(%s)\n' "$base_site" "'$base_site'" > "$site/ssd_jax_base_venv.pth"
  echo "== sandbox and zygote tests from $dest"
  (cd "$dest" && "$dest/.venv/bin/python" -m pytest -q -p no:cacheprovider \
     tests/evaluation/test_sandbox.py tests/evaluation/test_zygote.py "$@")
  rm -rf "$dest"
done
