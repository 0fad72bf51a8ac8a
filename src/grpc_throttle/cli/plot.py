"""``grpc-throttle demo --plot``: requests per second over time, against the quota.

Needs matplotlib (the ``plot`` extra); :func:`check` says so before the demo
spends its time running.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .demo import DemoConfig, RunResult

__all__ = ["check", "draw"]

#: Width of a histogram bin, in seconds: short enough to show bursts.
BIN = 0.5


def check(path: str) -> None:
    """Fail now, not after the demo, if ``path`` cannot be drawn.

    Raises:
        ImportError: matplotlib is missing.
        ValueError: ``path`` does not end in ``.png`` or its folder does not exist.
    """
    if not path.lower().endswith(".png"):
        raise ValueError(f"--plot needs a .png file name, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--plot: folder {folder!r} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install grpc-throttle[plot]", name="matplotlib") from exc


def draw(path: str, runs: Sequence[RunResult], config: DemoConfig) -> None:
    """Write a PNG of admitted (and throttled) requests per second for each run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 2.6 * len(runs) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(runs), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    end = max((run.wall for run in runs), default=1.0)
    edges = [i * BIN for i in range(math.ceil(end / BIN) + 1)] or [0.0, BIN]
    for ax, run in zip(axes, runs, strict=True):
        ax.stairs(_per_second(run.admitted_at, edges), edges, label="admitted", linewidth=1.8)
        if run.throttled_at:
            ax.stairs(_per_second(run.throttled_at, edges), edges, label="throttled answers", linestyle=":")
        ax.axhline(config.rate, color="black", linestyle="--", linewidth=1, label=f"quota {config.rate:g} req/s")
        if run.name == "grpc-throttle":
            # The bucket's effective rate: flat at the quota unless throttled
            # answers made it adapt (see AdaptiveRate).
            times = [0.0] + [t for t, _ in run.rate_changes] + [end]
            rates = [config.rate] + [rate for _, rate in run.rate_changes]
            ax.stairs(rates, times, color="tab:green", linewidth=1.2, label="effective rate (client)")
        title = f"{run.name}: {run.succeeded}/{run.calls} succeeded in {run.wall:.1f} s, {run.throttled} throttled"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("requests/s")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel(f"seconds since the run started ({BIN:g} s bins)")
    figure.savefig(path, dpi=110)


def _per_second(times: Sequence[float], edges: list[float]) -> list[float]:
    counts = [0] * (len(edges) - 1)
    for t in times:
        index = min(max(int(t // BIN), 0), len(counts) - 1)
        counts[index] += 1
    return [count / BIN for count in counts]
