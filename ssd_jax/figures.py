"""Matplotlib on the headless Agg backend, and PNGs written atomically (a killed run never leaves half a chart)."""

from __future__ import annotations

import io
import os


def new_figure(ncols: int = 1, figsize: tuple[float, float] = (6.4, 3.8), dpi: int = 120):
    """(figure, axes) on the Agg backend: works with no display, in worker processes and in CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize, dpi=dpi)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write `fig` as a PNG via a temp file + rename, then free it."""
    import matplotlib.pyplot as plt

    from ssd_jax.io_utils import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
