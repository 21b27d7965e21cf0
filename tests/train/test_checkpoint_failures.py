"""A checkpoint save that fails or is cut short never costs the last good one (ssd_jax/train/checkpoint.py)."""

import json
import shutil
import subprocess
import sys

SAVE_THEN_FAIL = r"""
import json, resource, signal, sys
import jax.numpy as jnp
from flax import nnx
from ssd_jax.errors import CheckpointError
from ssd_jax.train.checkpoint import TrainCheckpointer

class M(nnx.Module):
    def __init__(self, n):
        self.w = nnx.Param(jnp.arange(n, dtype=jnp.float32))

class Opt(nnx.Module):
    def __init__(self):
        self.step = nnx.Variable(jnp.zeros((), jnp.int32))

folder, n = sys.argv[1], 1 << 20  # a 4 MiB parameter
model, opt = M(n), Opt()
ckpt = TrainCheckpointer(folder, every=1, keep=5, async_save=False)
ckpt.save(1, model, opt, {"pos": 1}, {"step": 1})
ckpt.manager.wait_until_finished()
model.w[...] = model.w[...] + 1
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG, not death by signal
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    ckpt.save(2, model, opt, {"pos": 2}, {"step": 2})
    ckpt.manager.wait_until_finished()
    print(json.dumps({"error": None}))
except CheckpointError as e:
    print(json.dumps({"error": str(e)}))
"""

RESTORE = r"""
import json, sys
import jax.numpy as jnp
from flax import nnx
from ssd_jax.train.checkpoint import TrainCheckpointer

class M(nnx.Module):
    def __init__(self, n):
        self.w = nnx.Param(jnp.zeros((n,), jnp.float32))

class Opt(nnx.Module):
    def __init__(self):
        self.step = nnx.Variable(jnp.zeros((), jnp.int32))

model, opt = M(1 << 20), Opt()
ckpt = TrainCheckpointer(sys.argv[1], every=1, keep=5, async_save=False)
step = ckpt.latest_step()
data, meta = ckpt.restore(step, model, opt)
print(json.dumps({"step": step, "data": data, "w_last": float(model.w[...][-1])}))
"""


def run(code, *args):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_save_over_the_file_size_limit_is_one_error_and_keeps_the_last_step(tmp_path):
    folder = tmp_path / "checkpoints"
    out = run(SAVE_THEN_FAIL, folder)
    assert out["error"] and str(folder) in out["error"] and "saving step 2 failed" in out["error"]
    assert "step 1 is the last complete checkpoint" in out["error"]
    got = run(RESTORE, folder)
    assert got == {"step": 1, "data": {"pos": 1}, "w_last": float((1 << 20) - 1)}


def test_a_step_cut_short_mid_save_is_ignored_on_resume(tmp_path):
    """What a kill during orbax's write leaves: the step's temporary folder, never a finished step folder."""
    folder = tmp_path / "checkpoints"
    run(SAVE_THEN_FAIL.replace("(1 << 20, ", "(1 << 40, "), folder)  # two finished steps
    shutil.rmtree(folder / "2")
    shutil.copytree(folder / "1", folder / "2.orbax-checkpoint-tmp-1234")
    (folder / "2.orbax-checkpoint-tmp-1234" / "params").rename(folder / "2.orbax-checkpoint-tmp-1234" / "x")
    assert run(RESTORE, folder)["step"] == 1
