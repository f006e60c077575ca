"""Study-wide tables and correlations between dimension and barrier.

:func:`aggregate` concatenates the per-setting tables of a study into
``results/tables/`` and derives ``correlations.parquet``: for every dataset,
depth, hidden layer, dimension estimator, method, split, metric and quantity
(``barrier`` or ``midpoint``), the Pearson and Spearman correlation over
pairs between the pair's mean dimension (of its two models) and the
quantity, with ``n`` pairs. Groups with fewer than 3 pairs, missing values
or a constant input get a row with ``reason`` set and null coefficients.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from lmcpipe.io import metadata_of, read_table, table_metadata, write_table

log = logging.getLogger(__name__)

RUN_KEYS = ["dataset", "depth", "width", "lr"]
GROUP_KEYS = ["dataset", "depth", "layer", "estimator", "geometry", "method", "split", "metric", "quantity"]
TABLES = ("barriers", "curves", "dimensions", "histories", "alignments", "wasserstein")


class MixedVersionsError(ValueError):
    """Tables written by different lmcpipe versions were to be combined."""


def concat_tables(paths, allow_mixed_versions: bool = False) -> pa.Table:
    """Read and concatenate tables of one kind, checking they share a schema.

    Raises:
        MixedVersionsError: the tables were written by different lmcpipe
            versions and ``allow_mixed_versions`` is false. Snakemake does
            not rerun a step when the installed package changes, so such a
            mix means that some results predate an upgrade.
    """
    tables = [read_table(path) for path in paths]
    if not tables:
        raise ValueError("no tables to concatenate")
    by_version: dict[str, list[str]] = {}
    for path, table in zip(paths, tables):
        version = metadata_of(table).get("lmcpipe.version", "unknown")
        by_version.setdefault(version, []).append(str(path))
    if len(by_version) > 1:
        listing = "; ".join(
            f"{version}: {len(files)} file(s), e.g. {files[0]}" for version, files in sorted(by_version.items())
        )
        if not allow_mixed_versions:
            raise MixedVersionsError(
                f"tables written by different lmcpipe versions ({listing}); rerun the outdated "
                "steps (snakemake --cores all --forceall, or --forcerun RULE) or pass "
                "--allow-mixed-versions (config: aggregate.allow_mixed_versions: true)"
            )
        log.warning("combining tables written by different lmcpipe versions: %s", listing)
    stripped = [table.replace_schema_metadata(None) for table in tables]
    try:
        return pa.concat_tables(stripped, promote_options="default")
    except pa.ArrowInvalid as error:
        raise ValueError(f"tables {list(map(str, paths))} do not share a schema: {error}") from None


def _correlate(x: np.ndarray, y: np.ndarray) -> dict:
    row = {"n": int(len(x)), "pearson_r": None, "pearson_p": None,
           "spearman_rho": None, "spearman_p": None, "reason": ""}
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        row["reason"] = f"{int((~finite).sum())} pair(s) without a finite value"
        return row
    if len(x) < 3:
        row["reason"] = f"n = {len(x)}; correlations need at least 3 pairs"
    elif np.ptp(x) == 0:
        row["reason"] = "dimension is constant"
    elif np.ptp(y) == 0:
        row["reason"] = "barrier quantity is constant"
    else:
        pearson = stats.pearsonr(x, y)
        spearman = stats.spearmanr(x, y)
        row.update(
            pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
            spearman_rho=float(spearman.statistic), spearman_p=float(spearman.pvalue),
        )
    return row


def pair_dimensions(barriers: pd.DataFrame, dimensions: pd.DataFrame) -> pd.DataFrame:
    """Join each barrier row with the mean dimension of its two models, per layer and estimator."""
    dims = dimensions[RUN_KEYS + ["seed", "layer", "geometry", "estimator", "dimension"]]
    a = dims.rename(columns={"seed": "seed_a", "dimension": "dimension_a"})
    b = dims.rename(columns={"seed": "seed_b", "dimension": "dimension_b"})
    joined = barriers.merge(a, on=RUN_KEYS + ["seed_a"]).merge(
        b, on=RUN_KEYS + ["seed_b", "layer", "geometry", "estimator"]
    )
    joined["dimension"] = (joined["dimension_a"] + joined["dimension_b"]) / 2
    return joined


def correlation_table(barriers: pd.DataFrame, dimensions: pd.DataFrame) -> pd.DataFrame:
    """Return Pearson and Spearman correlations between pair dimension and barrier quantities."""
    joined = pair_dimensions(barriers, dimensions)
    long = joined.melt(
        id_vars=[column for column in joined.columns if column not in ("barrier", "midpoint")],
        value_vars=["barrier", "midpoint"], var_name="quantity", value_name="value",
    )
    rows = []
    for group, frame in long.groupby(GROUP_KEYS, sort=True):
        row = dict(zip(GROUP_KEYS, group))
        row.update(_correlate(frame["dimension"].to_numpy(float), frame["value"].to_numpy(float)))
        rows.append(row)
    columns = GROUP_KEYS + ["n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "reason"]
    return pd.DataFrame(rows, columns=columns)


def aggregate(inputs: dict[str, list], out_dir, allow_mixed_versions: bool = False) -> dict[str, Path]:
    """Write the study tables and the correlation table to ``out_dir``.

    Args:
        inputs: table kind (one of :data:`TABLES`) to the per-setting files
            of that kind.
        out_dir: folder for ``<kind>.parquet`` and ``correlations.parquet``.
        allow_mixed_versions: combine tables written by different lmcpipe
            versions instead of raising :class:`MixedVersionsError`.

    Returns:
        Table name to written path.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    tables = {}
    for kind in TABLES:
        tables[kind] = concat_tables(inputs[kind], allow_mixed_versions)
        path = out_dir / f"{kind}.parquet"
        write_table(tables[kind], path, table_metadata())
        written[kind] = path
    correlations = correlation_table(
        tables["barriers"].to_pandas(), tables["dimensions"].to_pandas()
    )
    path = out_dir / "correlations.parquet"
    write_table(pa.Table.from_pandas(correlations, preserve_index=False), path, table_metadata())
    written["correlations"] = path
    for row in correlations.itertuples():
        if row.reason:
            log.info("correlation %s: %s", row[1:len(GROUP_KEYS) + 1], row.reason)
    return written


def summary(barriers: pd.DataFrame, split: str = "test", metric: str = "loss") -> pd.DataFrame:
    """Return the mean barrier over pairs, one row per width and one column per method.

    The last row, ``all``, is the mean over every pair of the study.
    """
    rows = barriers[(barriers["split"] == split) & (barriers["metric"] == metric)]
    table = rows.pivot_table(index="width", columns="method", values="barrier", aggfunc="mean")
    table.loc["all"] = rows.groupby("method")["barrier"].mean()
    return table
