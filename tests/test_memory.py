"""Per-stage peak memory: the high-water mark resets per stage, a child's peak is its own, numbers are plausible."""

import sys

import numpy as np

from ssd_jax import memory


def test_stage_peak_sees_an_allocation_and_resets():
    assert memory.reset_peak_rss()  # Linux: /proc/self/clear_refs
    with memory.stage_peak() as big:
        x = np.ones(300_000_000 // 8)  # 300 MB, touched
        assert x.sum() > 0
        del x
    with memory.stage_peak() as small:
        y = np.ones(1000)
        assert y.sum() > 0
    assert big["scope"] == "stage" and big["peak_rss_gb"] >= small["peak_rss_gb"] + 0.25
    assert 0.01 < small["peak_rss_gb"] < 64 and big["seconds"] >= 0


def test_child_peak_is_the_childs_own():
    code = "import numpy as np; x = np.ones(400_000_000 // 8); print(x.sum() > 0)"
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
