"""JAX's persistent compilation cache, on for every `ssd-jax` command.

A stage or round that compiles the same program again (the same train step in round 2, the same sampler buckets in
every eval) loads the executable from disk instead of recompiling it: minutes per program for a 48-layer model on
GPU. Location: `--compilation-cache DIR`, else `$SSD_JAX_COMPILATION_CACHE`, else `xla/` in ssd-jax's one cache
folder (`io_utils.cache_root`: `~/.cache/ssd_jax/xla`); `off` disables it. Programs that compile in under
`$SSD_JAX_CACHE_MIN_COMPILE_SECS` (default 1 s, JAX's own default) are not worth a disk entry and are not stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssd_jax.io_utils import cache_root

ENV_DIR = "SSD_JAX_COMPILATION_CACHE"
ENV_MIN_SECS = "SSD_JAX_CACHE_MIN_COMPILE_SECS"


def default_dir() -> Path:
    return cache_root() / "xla"


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent cache at `directory` (see the module docstring for the default); returns the folder,
    or None when disabled. Call before the first compilation."""
    import jax

    where = str(directory) if directory else os.environ.get(ENV_DIR, "")
    if where.lower() == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(where).expanduser() if where else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ.get(ENV_MIN_SECS, "1.0")))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
