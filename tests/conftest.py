"""Test setup: 8 fake CPU devices for mesh tests (must precede the first jax import), offline HF hub."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # CPU tests; GPU targets come from the CUDA plugin's topologies
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process CLI calls would otherwise fill ~/.cache/ssd_jax/xla; the cache's own test sets a folder of its own.
os.environ.setdefault("SSD_JAX_COMPILATION_CACHE", "off")

import pytest  # noqa: E402

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(name) → an HF directory holding the tiny random model `name` (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-hf")
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny.save_tiny(name, root / name)
        return cache[name]

    return get


@pytest.fixture
def cli(capsys):
    """cli(argv) → (exit code, stderr stripped) of `ssd-jax argv`, with earlier output discarded."""
    from ssd_jax.cli import main

    def run(argv):
        capsys.readouterr()
        code = main(argv)
        return code, capsys.readouterr().err.strip()

    return run
