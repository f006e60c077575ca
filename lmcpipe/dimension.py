"""Dimension of the distribution of a layer's neuron weight vectors.

Estimators, by their name in the ``estimator`` column:

``participation_ratio``
    :math:`(\\sum_k \\lambda_k)^2 / \\sum_k \\lambda_k^2` for the eigenvalues
    :math:`\\lambda_k` of the second-moment matrix
    :math:`S = \\sum_i w_i w_i^\\top` of the incoming weight vectors
    :math:`w_i` (Ferbach et al., 2024). It equals k for points spread
    isotropically over a k-dimensional subspace.
``twonn``
    The TwoNN intrinsic dimension of Facco et al. (2017), from
    scikit-dimension, fitted on the distinct, non-zero weight vectors.
    TwoNN divides by the distance to the nearest neighbour, so duplicated
    points make it infinite. Dead ReLU units, whose incoming weights are
    often all zero, are such points. Duplicates and all-zero vectors are
    therefore removed first and counted in ``n_removed``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

ESTIMATORS = ("participation_ratio", "twonn")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One dimension estimate.

    Attributes:
        estimator: estimator name.
        dimension: the estimate, ``nan`` when ``reason`` is set.
        n_points: points the estimator saw.
        n_removed: points removed first (duplicates and all-zero vectors).
        reason: why no estimate was possible, else empty.
    """

    estimator: str
    dimension: float
    n_points: int
    n_removed: int
    reason: str = ""


def participation_ratio(points: np.ndarray) -> Estimate:
    """Return the participation ratio of the second moment of ``points`` (rows)."""
    points = np.asarray(points, np.float64)
    # The eigenvalues of sum_i w_i w_i^T are the squared singular values of W.
    eigenvalues = np.linalg.svd(points, compute_uv=False) ** 2
    total = eigenvalues.sum()
    if total == 0:
        return Estimate("participation_ratio", float("nan"), len(points), 0, "all points are zero")
    value = total**2 / np.sum(eigenvalues**2)
    return Estimate("participation_ratio", float(value), len(points), 0)


def distinct_nonzero(points: np.ndarray) -> tuple[np.ndarray, int]:
    """Return the distinct, not-all-zero rows of ``points`` and how many were removed."""
    points = np.asarray(points, np.float64)
    kept = points[np.any(points != 0, axis=1)]
    kept = np.unique(kept, axis=0)
    return kept, len(points) - len(kept)


def twonn(points: np.ndarray, discard_fraction: float = 0.1) -> Estimate:
    """Return the TwoNN intrinsic dimension of ``points`` after removing duplicates."""
    import skdim

    kept, removed = distinct_nonzero(points)
    if len(kept) < 3:
        return Estimate(
            "twonn", float("nan"), len(kept), removed,
            f"{len(kept)} distinct non-zero points; TwoNN needs at least 3",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(skdim.id.TwoNN(discard_fraction=discard_fraction).fit(kept).dimension_)
    if not np.isfinite(value):
        return Estimate("twonn", float("nan"), len(kept), removed, "TwoNN fit was not finite")
    return Estimate("twonn", value, len(kept), removed)


def estimate(estimator: str, points: np.ndarray) -> Estimate:
    """Run the estimator named ``estimator`` on ``points``."""
    if estimator == "participation_ratio":
        return participation_ratio(points)
    if estimator == "twonn":
        return twonn(points)
    raise ValueError(f"unknown dimension estimator {estimator!r}; available: {ESTIMATORS}")


def dimension_table(neuron_tables, estimators=ESTIMATORS):
    """Return one row per model, hidden layer and estimator of the given neuron tables.

    Columns: the run keys, ``seed``, ``layer``, ``geometry`` (``incoming``),
    ``estimator``, ``dimension``, ``n_points``, ``n_removed``, ``reason``.
    """
    import pyarrow as pa

    from lmcpipe.neurons import layer_matrix

    rows = []
    key_names = ["dataset", "depth", "width", "lr", "seed"]
    for table in neuron_tables:
        keys = {name: table[name][0].as_py() for name in key_names}
        for layer in sorted(set(table["layer"].to_pylist())):
            weights = layer_matrix(table, layer, "incoming")
            for name in estimators:
                result = estimate(name, weights)
                if result.reason:
                    log.warning("%s, layer %d, %s: %s", keys, layer, name, result.reason)
                rows.append(
                    {**keys, "layer": layer, "geometry": "incoming", **dataclasses.asdict(result)}
                )
    from lmcpipe.spec import run_key_fields

    schema = pa.schema(run_key_fields() + [
        ("seed", pa.int64()), ("layer", pa.int64()), ("geometry", pa.string()),
        ("estimator", pa.string()), ("dimension", pa.float64()), ("n_points", pa.int64()),
        ("n_removed", pa.int64()), ("reason", pa.string()),
    ])
    return pa.Table.from_pylist([{name: row[name] for name in schema.names} for row in rows], schema=schema)


def dimensions_to_file(neuron_paths, out, estimators=ESTIMATORS) -> None:
    """Estimate dimensions from neuron tables on disk and write the table to ``out``."""
    from lmcpipe.io import metadata_of, read_table, table_metadata, write_table

    tables = []
    for path in neuron_paths:
        table = read_table(path)
        status = metadata_of(table).get("lmcpipe.status", "ok")
        if status != "ok":
            log.warning("%s: run status is %r; no dimension estimated", path, status)
            continue
        tables.append(table)
    hashes = sorted({metadata_of(table).get("lmcpipe.config_hash", "") for table in tables})
    write_table(dimension_table(tables, estimators), out, table_metadata(",".join(hashes)))
