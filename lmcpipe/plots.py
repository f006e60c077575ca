"""PNG plots of a study's tables (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lmcpipe.aggregate import pair_dimensions  # noqa: E402
from lmcpipe.io import atomic_path  # noqa: E402


def _save(figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def barrier_vs_width(barriers: pd.DataFrame, path: Path, split="test", metric="loss") -> None:
    """Plot the mean barrier (± one standard deviation over pairs) against width, per method."""
    rows = barriers[(barriers["split"] == split) & (barriers["metric"] == metric)]
    lrs = sorted(rows["lr"].unique())
    figure, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.6), squeeze=False, sharey=True)
    for axis, lr in zip(axes[0], lrs):
        for method, frame in rows[rows["lr"] == lr].groupby("method"):
            stats = frame.groupby("width")["barrier"].agg(["mean", "std"]).fillna(0)
            axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=method)
        axis.set_xscale("log", base=2)
        axis.set_title(f"lr = {lr:g}")
        axis.set_xlabel("hidden width")
    axes[0][0].set_ylabel(f"{split} {metric} barrier")
    axes[0][-1].legend(title="method")
    _save(figure, path)


def barrier_vs_dimension(
    barriers: pd.DataFrame, dimensions: pd.DataFrame, path: Path,
    estimator="participation_ratio", split="test", metric="loss",
) -> None:
    """Scatter the barrier of each pair against its mean dimension, one panel per method."""
    joined = pair_dimensions(barriers, dimensions)
    rows = joined[(joined["split"] == split) & (joined["metric"] == metric) & (joined["estimator"] == estimator)]
    methods = sorted(rows["method"].unique())
    figure, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False, sharey=True)
    for axis, method in zip(axes[0], methods):
        frame = rows[rows["method"] == method]
        for lr, group in frame.groupby("lr"):
            axis.scatter(group["dimension"], group["barrier"], s=14, label=f"lr = {lr:g}")
        axis.set_title(method)
        axis.set_xlabel(f"{estimator} (mean of the pair, per layer)")
    axes[0][0].set_ylabel(f"{split} {metric} barrier")
    axes[0][-1].legend()
    _save(figure, path)


def interpolation_curves(curves: pd.DataFrame, path: Path, split="test", metric="loss") -> None:
    """Plot the mean curve over pairs against t, per method, one panel per width and learning rate."""
    rows = curves[(curves["split"] == split) & (curves["metric"] == metric)]
    lrs = sorted(rows["lr"].unique())
    widths = sorted(rows["width"].unique())
    figure, axes = plt.subplots(
        len(lrs), len(widths), figsize=(2.8 * len(widths), 2.4 * len(lrs)), layout="constrained",
        squeeze=False, sharex=True,
    )
    for i, lr in enumerate(lrs):
        for j, width in enumerate(widths):
            axis = axes[i][j]
            frame = rows[(rows["lr"] == lr) & (rows["width"] == width)]
            for method, group in frame.groupby("method"):
                mean = group.groupby("t")["value"].mean()
                axis.plot(mean.index, mean.to_numpy(), label=method)
            axis.set_title(f"width {width}, lr {lr:g}", fontsize=9)
            if i == len(lrs) - 1:
                axis.set_xlabel("t")
            if j == 0:
                axis.set_ylabel(f"{split} {metric}")
    axes[0][-1].legend(fontsize=8)
    _save(figure, path)


def empty_plot(path: Path, reason: str) -> None:
    """Write a figure that states why there is nothing to plot."""
    figure, axis = plt.subplots(figsize=(5, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
    _save(figure, path)


def plot_all(tables_dir, plots_dir) -> list[Path]:
    """Draw every plot of the study from the tables in ``tables_dir``."""
    tables_dir, plots_dir = Path(tables_dir), Path(plots_dir)
    barriers = pd.read_parquet(tables_dir / "barriers.parquet")
    dimensions = pd.read_parquet(tables_dir / "dimensions.parquet")
    curves = pd.read_parquet(tables_dir / "curves.parquet")
    paths = [
        plots_dir / "barrier_vs_width.png",
        plots_dir / "barrier_vs_dimension.png",
        plots_dir / "interpolation_curves.png",
    ]
    if barriers.empty:
        reason = "No pair to plot: every setting has fewer than two runs with status ok\n(see histories.parquet and the training logs)."
        for path in paths:
            empty_plot(path, reason)
        return paths
    barrier_vs_width(barriers, paths[0])
    barrier_vs_dimension(barriers, dimensions, paths[1])
    interpolation_curves(curves, paths[2])
    return paths
