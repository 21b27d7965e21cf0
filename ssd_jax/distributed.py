"""Multi-process runs: join the job before anything starts a JAX backend, then one writer and barriers.

`jax.distributed.initialize()` must be the first JAX call of a process (asking `jax.process_count()` first starts
the backend and makes it raise), so the CLI calls `initialize()` before any stage runs. A process joins when
the launcher sets jax's own variables (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or
`SSD_JAX_DISTRIBUTED=auto` asks JAX to detect the cluster (SLURM, Open MPI, TPU pods). On CPU the processes
talk through gloo, so a job of N processes on one machine runs like N hosts.

Every file a stage writes has one writer (process 0), or one file per process that process 0 merges after a
barrier. `process_count()`/`process_index()` here never start a backend for a single-process run (the vLLM stages
must not let JAX claim the GPU).
"""

from __future__ import annotations

import os

_JOINED: tuple[int, int] | None = None  # (processes, this process) once initialize() joined a job


def initialize() -> bool:
    """Join the multi-process job the environment describes; True if one was joined (idempotent)."""
    global _JOINED
    if _JOINED is not None:
        return True
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    auto = os.environ.get("SSD_JAX_DISTRIBUTED", "").lower() == "auto"
    if not address and not auto:
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices' collectives across processes
    if address:
        n, rank = _job_size()
        jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=rank)
    else:
        jax.distributed.initialize()
        from jax._src import distributed as jax_distributed

        # what the cluster detection found; jax.process_count() would start the backend here
        n, rank = jax_distributed.global_state.num_processes, jax_distributed.global_state.process_id
    _JOINED = (n, rank)
    return True


def _job_size() -> tuple[int, int]:
    """(processes, this process) as the launcher gave them (JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""
    from ssd_jax.errors import ConfigError

    try:
        return int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError):
        raise ConfigError("JAX_COORDINATOR_ADDRESS is set: JAX_NUM_PROCESSES and JAX_PROCESS_ID must be "
                          "integers too") from None


def join_coordination() -> bool:
    """A multi-process `ssd-jax run` whose stages run in child processes: join a job of the parents only, for
    barriers and the one-writer rule, on its own coordinator (`SSD_JAX_RUN_COORDINATOR`, default the stages'
    JAX_COORDINATOR_ADDRESS port + 1), so each stage's children form their own job on JAX_COORDINATOR_ADDRESS,
    one stage after another. It starts no JAX backend: the parents never hold a device. True if one was joined."""
    global _JOINED
    if _JOINED is not None:
        return True
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        if os.environ.get("SSD_JAX_DISTRIBUTED", "").lower() == "auto":
            from ssd_jax.errors import ConfigError

            raise ConfigError("a multi-process `ssd-jax run` with stages in child processes needs "
                              "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (cluster detection, "
                              "SSD_JAX_DISTRIBUTED=auto, cannot give the stages and the run two coordinators)")
        return False
    host, _, port = address.rpartition(":")
    own = os.environ.get("SSD_JAX_RUN_COORDINATOR") or f"{host}:{int(port) + 1}"
    import jax

    n, rank = _job_size()
    jax.distributed.initialize(coordinator_address=own, num_processes=n, process_id=rank)
    _JOINED = (n, rank)
    return True


JOB_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SSD_JAX_DISTRIBUTED")


def single_process_env() -> dict:
    """This process's environment without the variables that make a child join the job."""
    return {k: v for k, v in os.environ.items() if k not in JOB_VARS}


def process_count() -> int:
    return _JOINED[0] if _JOINED else 1


def process_index() -> int:
    return _JOINED[1] if _JOINED else 0


def is_writer() -> bool:
    return process_index() == 0


# A barrier waits as long as the slowest process's work before it (process 0 grading for hours, say).
BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_barriers = 0  # barriers passed by this process: every process passes the same ones in the same order


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op in a single-process run).

    Through the job's coordination service (the key-value store `jax.distributed.initialize` started), not a
    device computation: a barrier starts no JAX backend, so a process that only drives vLLM never claims the GPU
    memory JAX would preallocate."""
    global _barriers
    if process_count() <= 1:
        return
    _barriers += 1
    client = coordination_client()
    # ids must be unique per use: the same name passed twice (a stage per round) is two barriers
    client.wait_at_barrier(f"ssd-jax:{_barriers}:{name}"[:512], BARRIER_TIMEOUT_MS)


def coordination_client():
    """The jax.distributed job's coordination-service client (key-value store and barriers). JAX exposes it only
    under jax._src (orbax reads it the same way); a JAX without it is refused here, not worked around."""
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("no jax.distributed coordination client: initialize() has not joined a job")
    return client
