"""PNG plots of a study's tables (matplotlib, no display needed).

:data:`PLOTS` maps each plot name to the tables it reads from the study's
table folder and to the function that draws it. ``lmcpipe plot`` draws the
named plots into ``<name>.png``. Unless a caption states otherwise, barrier
plots show the test loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from lmcpipe.aggregate import pair_dimensions  # noqa: E402
from lmcpipe.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

QUANTITY_LABELS = {"barrier": "barrier", "midpoint": "value at t = 0.5"}


def _save(figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def _select(frame: pd.DataFrame, **values) -> pd.DataFrame:
    mask = np.ones(len(frame), bool)
    for column, value in values.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def _plain_log_labels(axis) -> None:
    """Label the ticks of a logarithmic y axis as plain numbers (2.5, not 2.5 × 10^0)."""
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(plain)


def _method_colors(methods) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {method: cycle[index % len(cycle)] for index, method in enumerate(sorted(methods))}


def _quantity_grid(rows: pd.DataFrame, panel: str, x: str, axes, colors) -> None:
    """Draw barrier (top row) and midpoint (bottom row) against ``x``, one panel per ``panel`` value.

    Each line is a method's mean over pairs, with one standard deviation as
    error bars.
    """
    for row, quantity in enumerate(QUANTITY_LABELS):
        for axis, value in zip(axes[row], sorted(rows[panel].unique())):
            for method, frame in rows[rows[panel] == value].groupby("method"):
                stats = frame.groupby(x)[quantity].agg(["mean", "std"]).fillna(0)
                axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                              label=method, color=colors[method])


def barrier_vs_width(barriers: pd.DataFrame, path: Path, split="test", metric="loss") -> None:
    """Plot the mean barrier and midpoint (± one standard deviation over pairs) against width.

    One row per quantity, one column per learning rate, one line per method.
    """
    rows = _select(barriers, split=split, metric=metric)
    lrs = sorted(rows["lr"].unique())
    figure, axes = plt.subplots(2, len(lrs), figsize=(4.2 * len(lrs), 6.4), squeeze=False, sharex=True)
    _quantity_grid(rows, "lr", "width", axes, _method_colors(rows["method"].unique()))
    for row, quantity in enumerate(QUANTITY_LABELS):
        for axis, lr in zip(axes[row], lrs):
            axis.set_xscale("log", base=2)
            axis.set_title(f"lr = {lr:g}")
            if row == 1:
                axis.set_xlabel("hidden width")
        axes[row][0].set_ylabel(f"{split} {metric} {QUANTITY_LABELS[quantity]}")
    axes[0][-1].legend(title="method", fontsize=8)
    _save(figure, path)


def barrier_vs_lr(barriers: pd.DataFrame, path: Path, split="test", metric="loss") -> None:
    """Plot the mean barrier and midpoint against learning rate, one column per width, one line per method."""
    rows = _select(barriers, split=split, metric=metric)
    widths = sorted(rows["width"].unique())
    figure, axes = plt.subplots(2, len(widths), figsize=(3.2 * len(widths), 6.2), squeeze=False,
                                sharex=True, sharey="row")
    _quantity_grid(rows, "width", "lr", axes, _method_colors(rows["method"].unique()))
    for row, quantity in enumerate(QUANTITY_LABELS):
        for axis, width in zip(axes[row], widths):
            axis.set_xscale("log")
            axis.set_title(f"width {width}")
            if row == 1:
                axis.set_xlabel("peak learning rate")
        axes[row][0].set_ylabel(f"{split} {metric} {QUANTITY_LABELS[quantity]}")
    axes[0][-1].legend(title="method", fontsize=8)
    _save(figure, path)


def dimension_vs_lr(dimensions: pd.DataFrame, path: Path, estimator="participation_ratio") -> None:
    """Plot the mean ``estimator`` dimension (± one standard deviation over seeds) against learning rate.

    One column per geometry, one row per hidden layer, one line per width.
    """
    rows = _select(dimensions, estimator=estimator)
    geometries = [name for name in ("incoming", "covariance", "activations") if name in set(rows["geometry"])]
    layers = sorted(rows["layer"].unique())
    widths = sorted(rows["width"].unique())
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(widths), 1)))
    figure, axes = plt.subplots(len(layers), len(geometries), figsize=(4.2 * len(geometries), 3.4 * len(layers)),
                                squeeze=False, sharex=True, layout="constrained")
    for i, layer in enumerate(layers):
        for j, geometry in enumerate(geometries):
            axis = axes[i][j]
            positive = False
            for color, width in zip(colors, widths):
                frame = _select(rows, layer=layer, geometry=geometry, width=width)
                stats = frame.groupby("lr")["dimension"].agg(["mean", "std"]).fillna(0)
                positive = positive or bool((stats["mean"] > 0).any())
                axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                              color=color, label=f"{width}")
            axis.set_xscale("log")
            # A panel whose estimates are all missing (diverged runs) keeps a linear axis.
            if positive:
                axis.set_yscale("log")
            _plain_log_labels(axis)
            axis.set_title(f"{geometry}, layer {layer}")
            if i == len(layers) - 1:
                axis.set_xlabel("peak learning rate")
        axes[i][0].set_ylabel(estimator.replace("_", " "))
    axes[0][-1].legend(title="width", fontsize=8)
    _save(figure, path)


def _rho_label(correlations: pd.DataFrame | None, **keys) -> str:
    if correlations is None:
        return ""
    match = _select(correlations, **keys)
    if match.empty:
        return ""
    row = match.iloc[0]
    if row["reason"]:
        return f"ρ: none ({row['reason']})"
    text = f"Spearman ρ = {row['spearman_rho']:.2f}"
    if pd.notna(row["spearman_low"]):
        text += f" [{row['spearman_low']:.2f}, {row['spearman_high']:.2f}]"
    return text + f", n = {row['n']}"


def barrier_vs_dimension(
    barriers: pd.DataFrame, dimensions: pd.DataFrame, path: Path, correlations: pd.DataFrame | None = None,
    estimator="participation_ratio", split="test", metric="loss",
) -> None:
    """Scatter the barrier of each pair against its mean dimension.

    One row per geometry and hidden layer, one column per method. Points are
    coloured by learning rate. The legend title gives Spearman's ρ from
    ``correlations`` with its bootstrap interval.
    """
    joined = pair_dimensions(barriers, dimensions)
    rows = _select(joined, split=split, metric=metric, estimator=estimator)
    methods = sorted(rows["method"].unique())
    panels = [(geometry, layer)
              for geometry in ("incoming", "covariance", "activations") if geometry in set(rows["geometry"])
              for layer in sorted(rows["layer"].unique())]
    figure, axes = plt.subplots(len(panels), len(methods), figsize=(4.2 * len(methods), 3.6 * len(panels)),
                                squeeze=False, sharey=True, layout="constrained")
    for i, (geometry, layer) in enumerate(panels):
        for j, method in enumerate(methods):
            axis = axes[i][j]
            frame = _select(rows, method=method, geometry=geometry, layer=layer)
            for lr, group in frame.groupby("lr"):
                axis.scatter(group["dimension"], group["barrier"], s=14, label=f"lr = {lr:g}")
            axis.set_title(f"{method}: {geometry}, layer {layer}", fontsize=10)
            axis.set_xlabel(f"{estimator.replace('_', ' ')} (mean of the pair)")
            title = _rho_label(correlations, geometry=geometry, estimator=estimator, method=method,
                               split=split, metric=metric, quantity="barrier", layer=layer)
            axis.legend(title=title, fontsize=7, title_fontsize=7, loc="upper right")
        axes[i][0].set_ylabel(f"{split} {metric} barrier")
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


def convergence(samples: pd.DataFrame, fits: pd.DataFrame, path: Path) -> None:
    """Plot W2 against width on log-log axes, with the fitted and the predicted slopes.

    Left panel: synthetic sources; right panel: trained networks (when
    present). Dots are single repeats, markers the mean over repeats, solid
    lines the fits and dashed lines the predicted slope through the fit's
    value at the geometric mean width.
    """
    has_trained = (samples["source"] == "trained").any()
    figure, axes = plt.subplots(1, 2 if has_trained else 1, figsize=(13 if has_trained else 7, 5), squeeze=False,
                                layout="constrained")
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(fits.itertuples())
    for index, fit in enumerate(groups):
        axis = axes[0][1 if fit.source == "trained" else 0]
        color = cycle[index % len(cycle)]
        if pd.isna(fit.lr):
            frame = samples[(samples["source"] == fit.source) & samples["lr"].isna()]
            name = fit.source
        else:
            frame = samples[(samples["source"] == fit.source) & (samples["lr"] == fit.lr)]
            name = f"{fit.source}, lr {fit.lr:g}"
        axis.scatter(frame["width"], frame["w2"], s=6, alpha=0.35, color=color)
        means = frame.groupby("width")["w2"].mean()
        axis.plot(means.index, means.to_numpy(), "o", color=color, markersize=4)
        if fit.reason:
            axis.plot([], [], color=color, label=f"{name}: no fit ({fit.reason})")
            continue
        widths = np.array([means.index.min(), means.index.max()], float)
        axis.plot(widths, np.exp(fit.intercept) * widths**fit.slope, "-", color=color,
                  label=(f"{name} (D = {fit.dimension:.3g}): slope {fit.slope:.3f} "
                         f"[{fit.slope_low:.3f}, {fit.slope_high:.3f}], predicted {fit.predicted_slope:.3f}"))
        center = np.exp(np.log(widths).mean())
        anchor = np.exp(fit.intercept) * center**fit.slope
        axis.plot(widths, anchor * (widths / center) ** fit.predicted_slope, "--", color=color, linewidth=1)
    titles = ["synthetic first layers", "trained first layers"]
    for axis, title in zip(axes[0], titles):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        _plain_log_labels(axis)
        axis.set_xlabel("width (neurons per network)")
        axis.set_ylabel("W2 between the two networks' neuron measures")
        axis.set_title(title + " (solid: fit, dashed: predicted slope)", fontsize=10)
        axis.legend(fontsize=7, loc="lower left")
    _save(figure, path)


BOUNDS_COLUMNS = ["bound", "layer", "geometry", "estimator", "model_width", "epsilon", "T", "exponent",
                  "log10_width"]


def _format_cell(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return pattern.format(value)


def bounds(table: pd.DataFrame, path: Path) -> None:
    """Render the bounds table (log10 of the required width) as a PNG table.

    Shows the columns of :data:`BOUNDS_COLUMNS` that ``table`` has, sorted by
    epsilon; ``-`` marks a value that does not apply.
    """
    columns = [column for column in BOUNDS_COLUMNS if column in table.columns]
    shown = table.sort_values("epsilon", ascending=False, kind="stable")[columns]
    patterns = {"layer": "{:d}", "model_width": "{:.0f}", "epsilon": "{:g}", "T": "{:g}",
                "exponent": "{:.4g}", "log10_width": "{:.4g}"}
    text = [[_format_cell(row[column], patterns.get(column, "{}")) for column in columns]
            for _, row in shown.iterrows()]
    figure, axis = plt.subplots(figsize=(1.1 * len(columns), 0.26 * (len(shown) + 2)))
    axis.axis("off")
    cells = axis.table(cellText=text, colLabels=columns, loc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(8)
    cells.auto_set_column_width(list(range(len(columns))))
    _save(figure, path)


def _read(tables_dir: Path, name: str) -> pd.DataFrame:
    path = tables_dir / f"{name}.parquet"
    if not path.is_file():
        raise ValueError(f"{path}: table not found; run the step that writes it first")
    return pd.read_parquet(path)


PLOTS = {
    "barrier_vs_width": (("barriers",), lambda t, path: barrier_vs_width(t["barriers"], path)),
    "barrier_vs_lr": (("barriers",), lambda t, path: barrier_vs_lr(t["barriers"], path)),
    "dimension_vs_lr": (("dimensions",), lambda t, path: dimension_vs_lr(t["dimensions"], path)),
    "barrier_vs_dimension": (
        ("barriers", "dimensions", "correlations"),
        lambda t, path: barrier_vs_dimension(t["barriers"], t["dimensions"], path, t["correlations"]),
    ),
    "interpolation_curves": (("curves",), lambda t, path: interpolation_curves(t["curves"], path)),
    "bounds": (("bounds",), lambda t, path: bounds(t["bounds"], path)),
    "convergence": (
        ("convergence", "convergence_fit"),
        lambda t, path: convergence(t["convergence"], t["convergence_fit"], path),
    ),
}
STUDY_PLOTS = ("barrier_vs_width", "barrier_vs_lr", "dimension_vs_lr", "barrier_vs_dimension",
               "interpolation_curves")


def empty_plot(path: Path, reason: str) -> None:
    """Write a figure that states why there is nothing to plot."""
    figure, axis = plt.subplots(figsize=(5, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
    _save(figure, path)


def plot_all(tables_dir, plots_dir, names=STUDY_PLOTS) -> list[Path]:
    """Draw the plots ``names`` (keys of :data:`PLOTS`) from the tables in ``tables_dir``."""
    tables_dir, plots_dir = Path(tables_dir), Path(plots_dir)
    unknown = sorted(set(names) - set(PLOTS))
    if unknown:
        raise ValueError(f"unknown plot(s) {unknown}; available: {sorted(PLOTS)}")
    tables: dict[str, pd.DataFrame] = {}
    paths = []
    for name in names:
        needed, draw = PLOTS[name]
        for table in needed:
            if table not in tables:
                tables[table] = _read(tables_dir, table)
        path = plots_dir / f"{name}.png"
        empty = [table for table in needed if tables[table].empty]
        if empty:
            # Every run of every setting diverged, or no setting has two runs.
            empty_plot(path, f"Nothing to plot: table(s) {', '.join(empty)} have no rows\n"
                             "(see histories.parquet and the logs).")
        else:
            draw(tables, path)
        paths.append(path)
    return paths
