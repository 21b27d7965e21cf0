"""The persistent XLA compilation cache: a second run of the same stage compiles nothing new."""

import os
import subprocess
import sys

from ssd_jax import compilation_cache


def test_second_run_of_a_stage_hits_the_compilation_cache(tiny_dir, tmp_path):
    cache = tmp_path / "xla"
    env = {**os.environ, compilation_cache.ENV_DIR: str(cache), compilation_cache.ENV_MIN_SECS: "0"}
    cmd = [sys.executable, "-m", "ssd_jax.cli", "parity", "--hf", str(tiny_dir("qwen3_moe")), "--padding", "right"]

    def run_and_list() -> dict[str, int]:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        return {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}

    first = run_and_list()
    assert first, "the first run stored no compiled program"
    # Every program of the second run came from the cache: no new entry, none rewritten (a miss would store again).
    assert run_and_list() == first


def test_off_disables_and_flag_beats_environment(tmp_path, monkeypatch):
    import jax

    monkeypatch.setenv(compilation_cache.ENV_DIR, str(tmp_path / "env"))
    try:
        assert compilation_cache.enable(tmp_path / "flag") == tmp_path / "flag"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "flag")
        assert compilation_cache.enable("off") is None
        assert not jax.config.jax_enable_compilation_cache
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", True)
