"""Per-stage peak memory: the high-water mark resets per stage, a child's peak is its own, numbers are plausible."""

import resource
import sys
import time

import numpy as np

from ssd_jax import memory


def test_stage_peak_is_per_stage_and_keeps_the_process_mark():
    with memory.stage_peak() as big:
        x = np.ones(400_000_000 // 8)  # 400 MB, touched: raises the process's high-water mark
        assert x.sum() > 0
        del x
    with memory.stage_peak() as small:
        y = np.ones(1000)
        assert y.sum() > 0
    with memory.stage_peak() as mid:  # below the process's mark: found by the sampling thread
        z = np.ones(250_000_000 // 8)
        assert z.sum() > 0
        time.sleep(0.2)
        assert memory.process_peak()["peak_rss_gb"] >= small["peak_rss_gb"] + 0.2  # the running stage's so far
        del z
    assert big["scope"] == small["scope"] == "stage"
    assert big["peak_rss_gb"] >= small["peak_rss_gb"] + 0.35, (big, small)
    assert small["peak_rss_gb"] + 0.2 <= mid["peak_rss_gb"] < big["peak_rss_gb"], (small, mid, big)
    assert 0.01 < small["peak_rss_gb"] < 64 and big["seconds"] >= 0
    # Nothing reset the kernel's mark, so an outside measurement (ru_maxrss, /usr/bin/time) still sees the big stage.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9 >= big["peak_rss_gb"] - 0.01
    assert memory.process_peak()["scope"] == "process"


def test_child_peak_is_the_childs_own():
    # The child holds its peak for a while: polling misses growth in a child's last poll_s (run_child's docstring).
    code = "import time, numpy as np; x = np.ones(400_000_000 // 8); print(x.sum() > 0); time.sleep(0.5)"
    rc, mem = memory.run_child([sys.executable, "-c", code])
    assert rc == 0 and mem["scope"] == "child process" and 0.4 <= mem["peak_rss_gb"] < 2.0
    rc, _ = memory.run_child([sys.executable, "-c", "raise SystemExit(3)"])
    assert rc == 3
    # A small child of a large parent reports its own size, not the parent's (rusage would fold the parent in).
    ballast = np.ones(1_500_000_000 // 8)
    assert ballast.sum() > 0
    rc, mem = memory.run_child([sys.executable, "-c", "print(1)"])
    assert rc == 0 and mem["peak_rss_gb"] < 0.5, mem


def test_format_peaks_lists_stages_with_memory():
    text = memory.format_peaks({"a": {"peak_rss_gb": 1.5, "scope": "stage"},
                                "c": {"peak_rss_gb": 0.25, "device_peak_gb": 3.0, "scope": "child process"}})
    assert "a    1.50 GB  (stage)" in text and "device 3.00 GB" in text
    assert memory.format_peaks({}) == ""


def test_return_freed_memory_gives_the_heap_back():
    # 64 KiB blocks come from glibc's heap (below its mmap threshold); a block kept after them pins the heap's top,
    # so freeing them leaves the pages resident until malloc_trim hands them back.
    blocks = [np.ones(8192) for _ in range(4000)]  # 262 MB
    pin = np.ones(8192)
    base = memory.rss_bytes()
    del blocks
    held = memory.rss_bytes()
    memory.return_freed_memory()
    after = memory.rss_bytes()
    assert held > base - 50e6, (base, held)  # still resident after the free
    assert after < held - 150e6, (held, after)
    assert pin.sum() == 8192


def test_cpu_checkpoints_synchronously_by_default():
    from ssd_jax.config import TrainConfig
    from ssd_jax.train.loop import _async_checkpointing

    assert _async_checkpointing(TrainConfig(), None) is False  # CPU: the saved copy would sit under the next step
    assert _async_checkpointing(TrainConfig(async_checkpointing=True), None) is True
