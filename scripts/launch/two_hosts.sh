#!/usr/bin/env bash
# Two hosts without a scheduler: the same command on each, from the same checkout on a shared filesystem.
#   host A:  bash scripts/launch/two_hosts.sh 0 ssd-jax run --config configs/qwen3-4b-instruct-2507.yaml
#   host B:  bash scripts/launch/two_hosts.sh 1 ssd-jax run --config configs/qwen3-4b-instruct-2507.yaml
# Both need SSD_JAX_COORDINATOR=<host A's address as host B reaches it>:<port>, the port free on host A (and the next
# one: `ssd-jax run` coordinates its stage processes there).
set -euo pipefail
[ $# -ge 2 ] && [[ "$1" =~ ^[01]$ ]] || { echo "usage: two_hosts.sh 0|1 ssd-jax <command> [args…]" >&2; exit 2; }
rank="$1"
shift
JAX_NUM_PROCESSES=2 JAX_PROCESS_ID="$rank" exec bash "$(dirname "$0")/process.sh" "$@"
