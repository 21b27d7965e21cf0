"""Deviceless GPU targets: XLA's GPU compiler on a machine without a GPU.

The CUDA PJRT plugin builds a device topology from a target description (a `GpuTargetConfigProto`: the `.txtpb`
files here, taken from XLA's own specs; each names its source) instead of opening devices. A program lowered over
those devices and compiled is the program a GPU run of that kind would execute: its `memory_analysis()`, its HLO
after every GPU pass, its kernels (cuBLAS, cuDNN and Triton calls) and collectives. Nothing executes; XLA cannot
autotune without a device, so GEMMs get its heuristic tilings, and `DEVICELESS_OPTIONS` says what else differs.

The plugin ships in the `gpu-aot` extra. Installed on a machine without an NVIDIA driver it would probe CUDA (and
log a cuInit failure) in every process that starts JAX, so `default_to_cpu()` makes such a process CPU-only unless
`JAX_PLATFORMS` says otherwise; the plugin still registers then, for topologies only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from functools import cache
from pathlib import Path

from ssd_jax.errors import UserError

KINDS = ("h100", "h200", "b200")
INSTALL = "pip install 'ssd-jax[gpu-aot]'"
DEVICES_PER_HOST = 8  # an HGX/DGX node
_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


def plugin_installed() -> bool:
    return any(importlib.util.find_spec(p.split(".")[0]) and importlib.util.find_spec(p) for p in _PLUGINS)


def nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def default_to_cpu() -> None:
    """JAX_PLATFORMS=cpu for this process (and its children) when the CUDA plugin is installed, no NVIDIA driver
    is present and nobody chose a platform: a machine that cannot run CUDA should not probe it. Also when JAX was
    imported first, as long as no backend has started."""
    if "JAX_PLATFORMS" in os.environ or nvidia_driver_present() or not plugin_installed():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax = sys.modules.get("jax")
    if jax is not None and not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")


def description(kind: str) -> str:
    """The target description of `kind` (one of KINDS), as the plugin takes it."""
    if kind not in KINDS:
        raise UserError(f"device kind {kind!r}: no GPU description for it (GPU kinds: {', '.join(KINDS)})")
    return (Path(__file__).parent / f"{kind}.txtpb").read_text()


def device_memory(kind: str) -> int:
    """Bytes of device memory the description gives (`device_memory_size`)."""
    return int(re.search(r"device_memory_size:\s*(\d+)", description(kind)).group(1))


def topology(n: int) -> str:
    """The plugin's topology string for `n` devices: slices x hosts x devices per host, 8 GPUs a host."""
    per_host = min(n, DEVICES_PER_HOST)
    if n % per_host:
        raise UserError(f"--devices {n}: a GPU target takes up to {DEVICES_PER_HOST} devices or a multiple of it "
                        f"(whole nodes)")
    return f"1x{n // per_host}x{per_host}"


def devices(kind: str, n: int) -> tuple:
    """`n` devices of GPU `kind` for a deviceless compile (no device is opened). Exit 2 with the install line when
    the CUDA plugin is missing."""
    if not plugin_installed():
        raise UserError(f"compiling for {kind} needs the CUDA PJRT plugin, which is not installed: {INSTALL} "
                        f"(~4.5 GB of CUDA libraries; or plan on simulated CPU devices with --simulate-cpu)")
    return _topology_devices(kind, n)


_DESCRIBED: set = set()  # every device `_topology_devices` made: described, with no device behind it


@cache
def _topology_devices(kind: str, n: int) -> tuple:
    text = description(kind)
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="cuda", target_config=text, topology=topology(n))
    except Exception as e:  # the plugin did not register (a CUDA check failed) or refused the description
        raise UserError(f"no {kind} topology from the CUDA plugin: {str(e).splitlines()[0]} (on a machine without "
                        f"a GPU run with JAX_PLATFORMS=cpu, which ssd-jax sets by default)") from None
    _DESCRIBED.update(topo.devices)
    return tuple(topo.devices)


# What a deviceless compile must do differently from a GPU run's, and why: XLA sizes the scratch buffer of CUB's
# radix sort (which it picks for large sorts: the MoE's argsort over routed rows) by calling CUB on a device, and
# fails without one ("cudaErrorInvalidDevice"). Compiled with XLA's own sort kernel instead; everything else is the
# GPU run's program.
DEVICELESS_OPTIONS = {"xla_gpu_enable_cub_radix_sort": False}


def compiler_options(devices) -> dict:
    """Compiler options for a program over `devices`: `DEVICELESS_OPTIONS` for a described GPU, none otherwise."""
    return dict(DEVICELESS_OPTIONS) if devices and devices[0] in _DESCRIBED else {}
