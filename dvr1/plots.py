"""One figure helper for the PNG plots of a run (`dvr1.train.metrics.plot_run`) and of an ablation grid
(`dvr1.ablate.report.plot_report`): matplotlib with the non-interactive Agg backend, one axes per file; and the
trailing rolling mean both smooth their curves with (`rolling_mean`)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing rolling mean: element i is the mean of ``values[max(0, i - window + 1) : i + 1]`` (the first
    ``window - 1`` points average the fewer points there are), one output per input, in order.

    Raises ValueError for ``window < 1``."""
    if window < 1:
        raise ValueError(f"rolling_mean: window={window} must be >= 1")
    values = list(values)
    return [sum(values[max(0, i - window + 1): i + 1]) / min(i + 1, window) for i in range(len(values))]


@contextlib.contextmanager
def figure(path: str, *, figsize: tuple[float, float], dpi: int, ylabel: str, title: str,
           xlabel: Optional[str] = None, title_fontsize: Optional[float] = None, grid: Optional[str] = "both",
           legend_fontsize: Optional[float] = 8) -> Iterator:
    """Yield a matplotlib ``Axes`` to draw on; on leaving the block, label it, add the legend, and write `path`.

    Args:
        path: PNG file written (its directory must exist). figsize: inches; dpi: pixels per inch of the file.
        ylabel, xlabel (None: none), title (`title_fontsize` points, None: matplotlib's default).
        grid: axis of the light grid lines ("both", "x", "y"; None: no grid).
        legend_fontsize: points (None: matplotlib's default size). The legend lists the labelled artists drawn.
    The figure is closed on leaving, also when the block raises (then nothing is written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        if xlabel is not None:
            ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, **({} if title_fontsize is None else {"fontsize": title_fontsize}))
        if grid is not None:
            ax.grid(axis=grid, alpha=0.3)
        ax.legend(**({} if legend_fontsize is None else {"fontsize": legend_fontsize}))
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)

