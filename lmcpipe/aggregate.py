"""Study-wide tables and correlations between dimension and barrier.

:func:`aggregate` concatenates the per-setting tables of a study into
``results/tables/`` and derives ``correlations.parquet``. It has one row for
every dataset, depth, hidden layer, geometry, dimension estimator, method,
split, metric and quantity (``barrier`` or ``midpoint``). Each row compares,
over the ``n`` pairs of models of all widths and learning rates, the pair's
mean dimension (of its two models) with the quantity:

* Pearson's r, Spearman's ρ and Kendall's τ (τ-b, which handles ties), each
  with the two-sided p-value of :mod:`scipy.stats`;
* a bootstrap percentile interval for ρ: ``bootstrap_resamples`` samples of
  n pairs drawn with replacement by a generator seeded with
  ``bootstrap_seed`` (the same seed in every group), and the
  (1 − c)/2 and (1 + c)/2 quantiles of ρ over the samples, c =
  ``confidence``. Samples in which either variable is constant have no ρ and
  are left out.

Pairs that share a model are not independent, so the p-values and the
interval, which assume independent pairs, are optimistic. Groups with fewer
than 3 pairs, a pair without a finite value, or a constant input get a row
with null coefficients and ``reason`` set.
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
GROUP_KEYS = ["dataset", "depth", "layer", "geometry", "estimator", "method", "split", "metric", "quantity"]
CORRELATION_COLUMNS = GROUP_KEYS + [
    "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "kendall_tau", "kendall_p",
    "spearman_low", "spearman_high", "confidence", "bootstrap_resamples", "bootstrap_seed", "reason",
]
TABLES = ("barriers", "curves", "dimensions", "histories", "alignments", "wasserstein")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


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


def study_hash(paths) -> str:
    """Return a hash of the training settings behind the given per-run tables.

    It is the first 16 hex digits of the SHA-256 of the sorted, distinct
    ``lmcpipe.config_hash`` values of the tables, so it changes exactly when
    a setting of the study is added, removed or changed.
    """
    import hashlib

    import pyarrow.parquet as pq

    hashes = set()
    for path in paths:
        raw = pq.read_schema(path).metadata or {}
        hashes.add(raw.get(b"lmcpipe.config_hash", b"").decode())
    return hashlib.sha256(",".join(sorted(hashes)).encode()).hexdigest()[:16]


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, resamples: int, seed: int,
                       confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """Return a bootstrap percentile interval for Spearman's ρ of the pairs ``(x[i], y[i])``.

    Draws ``resamples`` samples of ``len(x)`` pairs with replacement from
    ``numpy.random.default_rng(seed)``. ρ of a sample is Pearson's r of its
    average ranks, as in :func:`scipy.stats.spearmanr`.

    Returns:
        ``(low, high, valid)``: the interval, ``nan`` when no sample has a ρ,
        and the number of samples with a ρ (both variables non-constant).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(x), size=(resamples, len(x)))
    ranks_x = stats.rankdata(x[rows], axis=1)
    ranks_y = stats.rankdata(y[rows], axis=1)
    ranks_x -= ranks_x.mean(axis=1, keepdims=True)
    ranks_y -= ranks_y.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(ranks_x**2, axis=1) * np.sum(ranks_y**2, axis=1))
    valid = norms > 0
    if not valid.any():
        return float("nan"), float("nan"), 0
    rhos = np.sum(ranks_x * ranks_y, axis=1)[valid] / norms[valid]
    low, high = np.quantile(rhos, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high), int(valid.sum())


def correlate(x: np.ndarray, y: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict:
    """Return the correlation columns of one group of pairs (dimension ``x``, quantity ``y``)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    row = {"n": int(len(x)), "pearson_r": None, "pearson_p": None,
           "spearman_rho": None, "spearman_p": None, "kendall_tau": None, "kendall_p": None,
           "spearman_low": None, "spearman_high": None, "confidence": float(confidence),
           "bootstrap_resamples": int(resamples), "bootstrap_seed": int(seed), "reason": ""}
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        row["reason"] = f"{int((~finite).sum())} pair(s) without a finite value"
        return row
    if len(x) < 3:
        row["reason"] = f"n = {len(x)}; correlations need at least 3 pairs"
        return row
    if np.ptp(x) == 0:
        row["reason"] = "dimension is constant"
        return row
    if np.ptp(y) == 0:
        row["reason"] = "barrier quantity is constant"
        return row
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    kendall = stats.kendalltau(x, y)
    row.update(
        pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
        spearman_rho=float(spearman.statistic), spearman_p=float(spearman.pvalue),
        kendall_tau=float(kendall.statistic), kendall_p=float(kendall.pvalue),
    )
    if resamples > 0:
        low, high, valid = bootstrap_spearman(x, y, resamples, seed, confidence)
        if valid:
            row.update(spearman_low=low, spearman_high=high)
        else:
            row["reason"] = "no bootstrap sample has two distinct values of both variables"
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


def correlation_table(barriers: pd.DataFrame, dimensions: pd.DataFrame,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Return the correlations between pair dimension and barrier quantities, one row per group.

    Groups are :data:`GROUP_KEYS`; columns are :data:`CORRELATION_COLUMNS`
    (see the module docstring). ``resamples`` = 0 skips the bootstrap.
    """
    if resamples < 0:
        raise ValueError(f"invalid bootstrap resamples={resamples}: must be 0 (no interval) or more")
    if not 0 < confidence < 1:
        raise ValueError(f"invalid confidence={confidence}: must be in (0, 1)")
    joined = pair_dimensions(barriers, dimensions)
    long = joined.melt(
        id_vars=[column for column in joined.columns if column not in ("barrier", "midpoint")],
        value_vars=["barrier", "midpoint"], var_name="quantity", value_name="value",
    )
    rows = []
    for group, frame in long.groupby(GROUP_KEYS, sort=True):
        row = dict(zip(GROUP_KEYS, group))
        row.update(correlate(frame["dimension"].to_numpy(float), frame["value"].to_numpy(float),
                             resamples, seed, confidence))
        rows.append(row)
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def correlation_arrow(correlations: pd.DataFrame) -> pa.Table:
    """Convert a :func:`correlation_table` frame to Arrow, with nulls (not NaN) for missing coefficients."""
    types = {"depth": pa.int64(), "layer": pa.int64(), "n": pa.int64(),
             "bootstrap_resamples": pa.int64(), "bootstrap_seed": pa.int64()}
    strings = {"dataset", "geometry", "estimator", "method", "split", "metric", "quantity", "reason"}
    fields = []
    for name in CORRELATION_COLUMNS:
        kind = pa.string() if name in strings else types.get(name, pa.float64())
        fields.append(pa.field(name, kind))
    columns = {name: [None if value is None or (isinstance(value, float) and np.isnan(value)) else value
                      for value in correlations[name].tolist()]
               for name in CORRELATION_COLUMNS}
    return pa.Table.from_pydict(columns, schema=pa.schema(fields))


def aggregate(inputs: dict[str, list], out_dir, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
              allow_mixed_versions: bool = False) -> dict[str, Path]:
    """Write the study tables and the correlation table to ``out_dir``.

    Args:
        inputs: table kind (one of :data:`TABLES`) to the per-setting files
            of that kind.
        out_dir: folder for ``<kind>.parquet`` and ``correlations.parquet``.
        resamples, seed, confidence: bootstrap of :func:`correlation_table`.
        allow_mixed_versions: combine tables written by different lmcpipe
            versions instead of raising :class:`MixedVersionsError`.

    Returns:
        Table name to written path.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    tables = {}
    config_hash = study_hash(inputs["histories"])
    for kind in TABLES:
        tables[kind] = concat_tables(inputs[kind], allow_mixed_versions)
        path = out_dir / f"{kind}.parquet"
        write_table(tables[kind], path, table_metadata(config_hash))
        written[kind] = path
    correlations = correlation_table(
        tables["barriers"].to_pandas(), tables["dimensions"].to_pandas(), resamples, seed, confidence
    )
    path = out_dir / "correlations.parquet"
    write_table(correlation_arrow(correlations), path,
                table_metadata(config_hash, bootstrap_seed=str(seed), bootstrap_resamples=str(resamples)))
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
