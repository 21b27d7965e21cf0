"""Training checkpoints with orbax's CheckpointManager: parameters, optimizer state, data-iterator state, RNG.

Parameters and optimizer state are saved as flat `{dotted.path: array}` dicts, so a checkpoint restores onto any
mesh: the restore target carries the *current* shardings and orbax reshards. Saves are async (the device→host copy
happens before `save` returns, so the next step may reuse the buffers); orbax finalises a step by an atomic rename,
so a run killed mid-save resumes from the last complete checkpoint, and a save that fails (no room) is one error
naming the folder, the previous step still whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from ssd_jax import faults
from ssd_jax.errors import CheckpointError
from ssd_jax.sharding import path_str


def flat_arrays(state: nnx.State) -> dict[str, jax.Array]:
    return {path_str(p): v.get_value() for p, v in nnx.to_flat_state(state)}


def load_flat_into(state: nnx.State, arrays: dict[str, jax.Array], what: str) -> nnx.State:
    """A copy of `state` with every variable replaced from `arrays` (same keys required)."""
    flat = list(nnx.to_flat_state(state))
    keys = {path_str(p) for p, _ in flat}
    if keys != set(arrays):
        missing = sorted(keys - set(arrays))[:3]
        extra = sorted(set(arrays) - keys)[:3]
        raise CheckpointError(f"checkpoint {what} does not fit this model: missing {missing}, unexpected {extra}")
    return nnx.from_flat_state([(p, v.replace(arrays[path_str(p)])) for p, v in flat])


def _os_error(e: Exception) -> str | None:
    """The operating system's reason behind a failed write: an OSError's, or the errno tensorstore (orbax's
    writer) puts in its ValueError's text (`[os_error_code='28']`); None for anything else."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    m = re.search(r"os_error_code='(\d+)'", str(e))
    return os.strerror(int(m.group(1))) if m else None


def _abstract(arrays: dict[str, jax.Array]) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in arrays.items()}


class TrainCheckpointer:
    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int, async_save: bool = True):
        self.dir = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(every, 1), enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.dir, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, model, optimizer, data_state: dict, meta: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(flat_arrays(nnx.state(model, nnx.Param))),
            opt=ocp.args.StandardSave(flat_arrays(nnx.state(optimizer))),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        try:
            saved = self.manager.save(step, args=args, force=force)
            if saved:
                faults.point("checkpoint.saving")
            return saved
        except (OSError, ValueError) as e:  # out of space, over a file-size limit: the last finished step is whole
            reason = _os_error(e)
            if reason is None:
                raise
            raise CheckpointError(f"{self.dir}: saving step {step} failed ({reason}); step {self.latest_step()} "
                                  f"is the last complete checkpoint and a rerun resumes from it") from None

    def restore(self, step: int, model, optimizer) -> tuple[dict, dict]:
        """Restore params and optimizer state in place (onto their current shardings); return (data, meta)."""
        params_state = nnx.state(model, nnx.Param)
        opt_state = nnx.state(optimizer)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(flat_arrays(params_state))),
                opt=ocp.args.StandardRestore(_abstract(flat_arrays(opt_state))),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        nnx.update(model, load_flat_into(params_state, out["params"], "parameters"))
        nnx.update(optimizer, load_flat_into(opt_state, out["opt"], "optimizer state"))
        return out["data"], out["meta"]

    def restore_params(self, step: int, model) -> None:
        """Restore only the parameters (export, evaluation) in place, onto their current shardings."""
        params_state = nnx.state(model, nnx.Param)
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(flat_arrays(params_state)))))
        nnx.update(model, load_flat_into(params_state, out["params"], "parameters"))

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
