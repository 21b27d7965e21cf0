#!/usr/bin/env bash
# One process of a multi-host ssd-jax job: set jax.distributed's three variables, then run the command given.
#   SSD_JAX_COORDINATOR  host:port of process 0 (every process gives the same; the port must be free there, and
#                        port + 1 too: `ssd-jax run` coordinates its stage processes on it)
#   JAX_NUM_PROCESSES    processes in the job     (default: SLURM_NTASKS)
#   JAX_PROCESS_ID       this process, 0-based    (default: SLURM_PROCID)
# Every process runs the same command; see docs/multinode.md.
set -euo pipefail
: "${SSD_JAX_COORDINATOR:?set SSD_JAX_COORDINATOR=host:port of process 0}"
export JAX_COORDINATOR_ADDRESS="$SSD_JAX_COORDINATOR"
export JAX_NUM_PROCESSES="${JAX_NUM_PROCESSES:-${SLURM_NTASKS:?set JAX_NUM_PROCESSES (or run under srun)}}"
export JAX_PROCESS_ID="${JAX_PROCESS_ID:-${SLURM_PROCID:?set JAX_PROCESS_ID (or run under srun)}}"
[ $# -gt 0 ] || { echo "usage: process.sh ssd-jax <command> [args…]" >&2; exit 2; }
exec "$@"
