"""Wasserstein distances between the neuron measures of two networks.

The neuron measure of a hidden layer is the uniform empirical measure on its
units' incoming weight vectors. For two networks A and B,

.. math::
    W_2(\\mu_A, \\mu_B)^2 = \\min_{\\gamma \\in \\Pi(\\mu_A, \\mu_B)}
    \\sum_{i,j} \\gamma_{ij}\\, d(w^A_i, w^B_j)^2

in the Euclidean metric :math:`d(u, v)^2 = \\lVert u - v \\rVert^2` or in the
metric of the layer's input second moment
:math:`d(u, v)^2 = (u - v)^\\top \\Sigma (u - v)`, :math:`\\Sigma = E[x x^\\top]`
of model A's input to the layer over the training set: the expected squared
gap between the two units' pre-activations (biases aside).

For equal sizes the optimal plan is a permutation, found exactly by linear
assignment. Otherwise POT's exact network-simplex solver runs with its
iteration cap raised, and its result code is checked, because it returns a
non-optimal plan with only a warning when the cap is hit. Beyond the first
layer, B's input axis is permuted by the optimal assignment of the previous
layer in the same metric, as in the layer-by-layer construction of Ferbach
et al. (2024).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)

METRICS = ("euclidean", "covariance")
EMD_MAX_ITER = 10_000_000


def metric_root(sigma: np.ndarray) -> np.ndarray:
    """Return L with ``L @ L.T = sigma`` for a symmetric positive semi-definite ``sigma``."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cost = np.sum(x**2, axis=1)[:, None] + np.sum(y**2, axis=1)[None, :] - 2 * x @ y.T
    return np.maximum(cost, 0.0)


def w2_distance(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray | None]:
    """Return W2 between uniform measures on the rows of ``x`` and ``y``.

    Returns:
        ``(w2, assignment)``: ``assignment[i]`` is the row of ``y`` coupled
        with row ``i`` of ``x`` when both have as many rows, else ``None``.

    Raises:
        ValueError: the exact solver stopped before optimality.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"points of dimension {x.shape[1]} and {y.shape[1]} cannot be compared")
    cost = squared_distances(x, y)
    if x.shape[0] == y.shape[0]:
        rows, cols = linear_sum_assignment(cost)
        return float(np.sqrt(cost[rows, cols].mean())), cols
    import ot

    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plan, info = ot.emd(a, b, cost, numItermax=EMD_MAX_ITER, log=True)
    if info["result_code"] != 1:
        raise ValueError(
            f"exact optimal transport between {x.shape[0]} and {y.shape[0]} points failed: "
            f"{info['warning']} (result code {info['result_code']})"
        )
    return float(np.sqrt(max(np.sum(plan * cost), 0.0))), None


def layer_distances(params_a, params_b, metric: str, input_moments=None) -> list[float]:
    """Return W2 per hidden layer between the neuron measures of two MLPs.

    Args:
        params_a, params_b: MLP parameter trees of equal depth.
        metric: ``"euclidean"`` or ``"covariance"``.
        input_moments: ``E[x x^T]`` of model A's input to each layer
            (:attr:`lmcpipe.statistics.Moments.inputs`), for ``covariance``.
    """
    from lmcpipe.layout import layer_names

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if metric == "covariance" and input_moments is None:
        raise ValueError("the covariance metric needs model A's input second moments")
    names = layer_names(params_a)[:-1]
    distances = []
    previous = None
    for index, name in enumerate(names):
        x = np.asarray(params_a[name]["kernel"], np.float64).T
        y = np.asarray(params_b[name]["kernel"], np.float64)
        if previous is not None:
            y = y[previous, :]
        y = y.T
        if metric == "covariance":
            root = metric_root(input_moments[index])
            x, y = x @ root, y @ root
        distance, previous = w2_distance(x, y)
        distances.append(distance)
        if previous is None and index + 1 < len(names):
            raise ValueError("layers of unequal width have no permutation to carry to the next layer")
    return distances


def wasserstein_table(models, dataset=None, pairing: str = "all"):
    """Return W2 per pair, hidden layer and metric for the models of one setting.

    Pairs are chosen as for alignment (:func:`lmcpipe.alignment.seed_pairs`
    with ``pairing``). Columns: run keys, ``seed_a, seed_b, layer, metric, w2``.
    """
    import pyarrow as pa

    from lmcpipe.alignment import seed_pairs
    from lmcpipe.spec import TrainSpec
    from lmcpipe.statistics import activation_moments

    from lmcpipe.spec import run_key_fields

    schema = pa.schema(run_key_fields() + [
        ("seed_a", pa.int64()), ("seed_b", pa.int64()), ("layer", pa.int64()),
        ("metric", pa.string()), ("w2", pa.float64()),
    ])
    if len(models) < 2:
        return schema.empty_table()
    if dataset is None:
        from lmcpipe.data import load_for_spec

        dataset = load_for_spec(TrainSpec.from_dict(models[0][1]["spec"]))
    rows = []
    for i, j in seed_pairs(models, pairing):
        (params_a, meta_a), (params_b, meta_b) = models[i], models[j]
        keys = TrainSpec.from_dict(meta_a["spec"]).run_keys()
        moments = activation_moments(params_a, dataset.x_train)
        for metric in METRICS:
            distances = layer_distances(params_a, params_b, metric, moments.inputs)
            for layer, distance in enumerate(distances):
                rows.append({**keys, "seed_a": meta_a["seed"], "seed_b": meta_b["seed"],
                             "layer": layer, "metric": metric, "w2": distance})
        log.info("seeds %d-%d: W2 %s", meta_a["seed"], meta_b["seed"],
                 {row["metric"]: round(row["w2"], 5) for row in rows[-2 * len(distances):]})
    return pa.Table.from_pylist(rows, schema=schema)


def wasserstein_to_file(checkpoints, out, pairing: str = "all") -> None:
    """Compute W2 distances for every pair of the given checkpoints and write them to ``out``."""
    from lmcpipe.alignment import load_models
    from lmcpipe.io import table_metadata, write_table

    models, _ = load_models(checkpoints)
    hashes = ",".join(sorted({meta["spec_hash"] for _, meta in models}))
    write_table(wasserstein_table(models, pairing=pairing), out, table_metadata(hashes))
