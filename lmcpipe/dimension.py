"""Dimension of each hidden layer of an MLP, in three geometries.

Hidden layer l of a model has the incoming weight vectors :math:`w_i`
(column i of its kernel, one per unit) and, over the training set, the input
:math:`h` (the raw inputs for l = 0, else the post-ReLU output of layer
l − 1) and the post-ReLU output :math:`a`. The ``geometry`` column names the
second-moment matrix S, or the cloud of points, that the estimators use:

``incoming``
    The points :math:`w_i`; :math:`S = \\sum_i w_i w_i^\\top`, the matrix of
    Ferbach, Goujaud, Gidel and Dieuleveut (AISTATS 2024).
``covariance``
    The points :math:`\\Sigma^{1/2} w_i` with :math:`\\Sigma = E[h h^\\top]`,
    the uncentred second moment of the layer's input over the training set.
    Distances between these points are the root mean square gaps between
    two units' pre-activations (biases aside), the metric of
    :mod:`lmcpipe.wasserstein`. The nonzero eigenvalues of S are those of
    the Gram matrix :math:`W \\Sigma W^\\top`, W with rows :math:`w_i^\\top`.
``activations``
    :math:`S = E[a a^\\top]` over the training set (one point per example,
    in the space of the layer's units). Only the spectral estimators apply.

Both moments come from :func:`lmcpipe.statistics.activation_moments`.

Estimators, by their name in the ``estimator`` column, with
:math:`\\lambda_1 \\ge \\lambda_2 \\ge \\dots` the eigenvalues of S:

``participation_ratio``
    :math:`(\\sum_k \\lambda_k)^2 / \\sum_k \\lambda_k^2`. It equals k for
    points spread isotropically over a k-dimensional subspace.
``pca_90``, ``pca_95``, ``pca_99``
    The smallest k with :math:`\\sum_{j \\le k} \\lambda_j \\ge q \\sum_j
    \\lambda_j` for q = 0.90, 0.95 or 0.99. S is the uncentred second
    moment, as for the participation ratio, so this counts the directions
    that carry a share q of the second moment, not of the variance about
    the mean.
``twonn``
    The TwoNN intrinsic dimension of Facco et al. (2017) from
    scikit-dimension (``skdim.id.TwoNN``), discarding the 10 % largest
    ratios of second- to first-neighbour distance.
``mle``
    The Levina–Bickel maximum-likelihood estimate from scikit-dimension
    (``skdim.id.MLE`` with ``unbiased=True``): at each point x with
    neighbour distances
    :math:`T_1(x) \\le \\dots \\le T_k(x)`,
    :math:`\\hat m(x) = (k - 2) / \\sum_{j < k} \\log(T_k(x) / T_j(x))`,
    averaged over the points, with k = :data:`MLE_NEIGHBOURS` (at most the
    number of points minus 1).

TwoNN and MLE divide by neighbour distances, so duplicated points (dead or
copied units) and all-zero points make them infinite. They see only the
distinct points whose norm exceeds :data:`ZERO_TOLERANCE` times the largest
norm, and ``n_removed`` counts the others. They run on the ``incoming`` and
``covariance`` geometries.

``spread`` is the standard deviation (ddof = 1) of the same estimator over
``subsamples`` random subsets, each of round(``subsample_fraction`` · n)
points drawn without replacement: units for the ``incoming`` and
``covariance`` geometries, training examples for ``activations``. The
subsets are seeded by the dimension seed and the model's seed index, so a
rerun gives the same spread. It measures how stable an estimate is. Because
the subsets overlap and are smaller than the full set, it is not a standard
error of the full-sample estimate.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

SPECTRAL_ESTIMATORS = ("participation_ratio", "pca_90", "pca_95", "pca_99")
NEIGHBOUR_ESTIMATORS = ("twonn", "mle")
ESTIMATORS = SPECTRAL_ESTIMATORS + NEIGHBOUR_ESTIMATORS
GEOMETRIES = ("incoming", "covariance", "activations")
POINT_GEOMETRIES = ("incoming", "covariance")

PCA_LEVELS = {"pca_90": 0.90, "pca_95": 0.95, "pca_99": 0.99}
TWONN_DISCARD_FRACTION = 0.1
MLE_NEIGHBOURS = 20
# A point whose norm is at most this share of the largest norm counts as zero.
ZERO_TOLERANCE = 1e-12

COLUMNS = [
    "dataset", "depth", "width", "lr", "seed", "layer", "geometry", "estimator",
    "dimension", "spread", "n_points", "n_removed", "reason",
]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One dimension estimate.

    Attributes:
        estimator: estimator name.
        dimension: the estimate, ``nan`` when ``reason`` is set.
        n_points: points the estimator saw (after removals).
        n_removed: points removed first (duplicates and all-zero vectors).
        reason: why no estimate was possible, else empty.
        spread: standard deviation over subsamples, ``nan`` when not computed.
    """

    estimator: str
    dimension: float
    n_points: int
    n_removed: int
    reason: str = ""
    spread: float = float("nan")


@dataclasses.dataclass(frozen=True)
class DimensionOptions:
    """Estimators, geometries and subsampling of :func:`dimension_table`.

    Attributes:
        estimators: names from :data:`ESTIMATORS`.
        geometries: names from :data:`GEOMETRIES`.
        subsamples: subsets behind ``spread``; 0 leaves ``spread`` null.
        subsample_fraction: share of the points in each subset, in (0, 1).
        seed: root of the subsets' random generator.
    """

    estimators: tuple[str, ...] = ESTIMATORS
    geometries: tuple[str, ...] = GEOMETRIES
    subsamples: int = 10
    subsample_fraction: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.estimators) - set(ESTIMATORS))
        if unknown:
            raise ValueError(f"unknown dimension estimator(s) {unknown}; available: {list(ESTIMATORS)}")
        unknown = sorted(set(self.geometries) - set(GEOMETRIES))
        if unknown:
            raise ValueError(f"unknown geometry(ies) {unknown}; available: {list(GEOMETRIES)}")
        if self.subsamples < 0 or self.subsamples == 1:
            raise ValueError(
                f"invalid subsamples={self.subsamples}: use 0 (no spread) or at least 2, "
                "because a standard deviation needs two values"
            )
        if not 0 < self.subsample_fraction < 1:
            raise ValueError(f"invalid subsample_fraction={self.subsample_fraction}: must be in (0, 1)")


def _failed(estimator: str, n_points: int, n_removed: int, reason: str) -> Estimate:
    return Estimate(estimator, float("nan"), n_points, n_removed, reason)


def spectrum(points: np.ndarray) -> np.ndarray:
    """Return the eigenvalues of ``sum_i p_i p_i^T`` over the rows ``p_i``, largest first."""
    # They are the squared singular values of the matrix of rows.
    return np.linalg.svd(np.asarray(points, np.float64), compute_uv=False) ** 2


def moment_spectrum(moment: np.ndarray) -> np.ndarray:
    """Return the eigenvalues of a symmetric second-moment matrix, largest first, clipped at 0."""
    moment = np.asarray(moment, np.float64)
    values = np.linalg.eigvalsh((moment + moment.T) / 2)
    return np.clip(values[::-1], 0.0, None)


def spectral_estimate(estimator: str, eigenvalues: np.ndarray, n_points: int) -> Estimate:
    """Apply a spectral estimator to the eigenvalues of a second-moment matrix."""
    eigenvalues = np.sort(np.clip(np.asarray(eigenvalues, np.float64), 0.0, None))[::-1]
    total = eigenvalues.sum()
    if not np.isfinite(total):
        return _failed(estimator, n_points, 0, "second moment is not finite")
    if total == 0:
        return _failed(estimator, n_points, 0, "all points are zero")
    if estimator == "participation_ratio":
        value = total**2 / np.sum(eigenvalues**2)
    elif estimator in PCA_LEVELS:
        # The relative slack keeps a share that equals q exactly from being
        # pushed one component further by rounding.
        shares = np.cumsum(eigenvalues) / total
        value = int(np.searchsorted(shares, PCA_LEVELS[estimator] - 1e-12)) + 1
    else:
        raise ValueError(f"{estimator!r} is not a spectral estimator; expected one of {SPECTRAL_ESTIMATORS}")
    return Estimate(estimator, float(value), n_points, 0)


def participation_ratio(points: np.ndarray) -> Estimate:
    """Return the participation ratio of the second moment of ``points`` (rows)."""
    return spectral_estimate("participation_ratio", spectrum(points), len(points))


def pca_dimension(points: np.ndarray, level: str = "pca_95") -> Estimate:
    """Return the PCA dimension at level ``pca_90``, ``pca_95`` or ``pca_99`` of ``points`` (rows)."""
    return spectral_estimate(level, spectrum(points), len(points))


def distinct_nonzero(points: np.ndarray) -> tuple[np.ndarray, int]:
    """Return the distinct rows of ``points`` that are not (nearly) zero, and how many were removed.

    A row counts as zero when its norm is at most :data:`ZERO_TOLERANCE`
    times the largest row norm, so that points mapped to zero by a
    rank-deficient :math:`\\Sigma^{1/2}` are removed despite rounding.
    """
    points = np.asarray(points, np.float64)
    norms = np.linalg.norm(points, axis=1)
    largest = norms.max(initial=0.0)
    kept = points[norms > ZERO_TOLERANCE * largest] if largest > 0 else points[:0]
    kept = np.unique(kept, axis=0)
    return kept, len(points) - len(kept)


def twonn(points: np.ndarray, discard_fraction: float = TWONN_DISCARD_FRACTION) -> Estimate:
    """Return the TwoNN intrinsic dimension of ``points`` after removing duplicates and zeros."""
    import skdim

    kept, removed = distinct_nonzero(points)
    if len(kept) < 3:
        return _failed("twonn", len(kept), removed,
                       f"{len(kept)} distinct non-zero points; TwoNN needs at least 3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(skdim.id.TwoNN(discard_fraction=discard_fraction).fit(kept).dimension_)
    if not np.isfinite(value):
        return _failed("twonn", len(kept), removed, "TwoNN fit was not finite")
    return Estimate("twonn", value, len(kept), removed)


def mle(points: np.ndarray, neighbours: int = MLE_NEIGHBOURS) -> Estimate:
    """Return the Levina–Bickel MLE dimension of ``points`` after removing duplicates and zeros."""
    import skdim

    kept, removed = distinct_nonzero(points)
    # The estimate uses (k - 2) / sum of k - 1 logarithms, so k >= 3 neighbours.
    if len(kept) < 4:
        return _failed("mle", len(kept), removed,
                       f"{len(kept)} distinct non-zero points; the MLE needs at least 4")
    k = min(neighbours, len(kept) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted = skdim.id.MLE(unbiased=True).fit(kept, n_neighbors=k, comb="mean")
    value = float(fitted.dimension_)
    if not np.isfinite(value):
        return _failed("mle", len(kept), removed, "MLE fit was not finite")
    return Estimate("mle", value, len(kept), removed)


def estimate(estimator: str, points: np.ndarray) -> Estimate:
    """Run the estimator named ``estimator`` on the rows of ``points``."""
    if estimator in SPECTRAL_ESTIMATORS:
        return spectral_estimate(estimator, spectrum(points), len(points))
    if estimator == "twonn":
        return twonn(points)
    if estimator == "mle":
        return mle(points)
    raise ValueError(f"unknown dimension estimator {estimator!r}; available: {ESTIMATORS}")


def subsets(rng: np.random.Generator, n: int, options: DimensionOptions) -> list[np.ndarray]:
    """Draw ``options.subsamples`` sorted index sets of round(fraction · n) of ``range(n)``."""
    size = max(1, int(round(options.subsample_fraction * n)))
    return [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(options.subsamples)]


def standard_deviation(values: list[float]) -> float:
    """Return the sample standard deviation of the finite ``values``, ``nan`` below two."""
    finite = np.asarray([value for value in values if np.isfinite(value)], np.float64)
    if len(finite) < 2:
        return float("nan")
    return float(np.std(finite, ddof=1))


def point_estimates(points: np.ndarray, estimators, index_sets) -> list[Estimate]:
    """Estimate each dimension of a point cloud, with its spread over the row subsets ``index_sets``."""
    results = []
    for name in estimators:
        full = estimate(name, points)
        spread = standard_deviation([estimate(name, points[rows]).dimension for rows in index_sets])
        results.append(dataclasses.replace(full, spread=spread if not full.reason else float("nan")))
    return results


def moment_estimates(moment: np.ndarray, n_points: int, estimators, subset_moments) -> list[Estimate]:
    """Estimate each spectral dimension of ``moment``, with its spread over ``subset_moments``."""
    full_spectrum = moment_spectrum(moment)
    subset_spectra = [moment_spectrum(matrix) for matrix in subset_moments]
    results = []
    for name in estimators:
        full = spectral_estimate(name, full_spectrum, n_points)
        values = [spectral_estimate(name, values, n_points).dimension for values in subset_spectra]
        spread = standard_deviation(values) if not full.reason else float("nan")
        results.append(dataclasses.replace(full, spread=spread))
    return results


def geometry_estimators(geometry: str, estimators) -> list[str]:
    """Return the requested estimators that apply to ``geometry``, in request order."""
    if geometry in POINT_GEOMETRIES:
        return list(estimators)
    return [name for name in estimators if name in SPECTRAL_ESTIMATORS]


def model_estimates(params, x_train: np.ndarray, model_seed: int,
                    options: DimensionOptions) -> list[tuple[int, str, Estimate]]:
    """Estimate every requested dimension of each hidden layer of one MLP.

    Args:
        params: MLP parameter tree (see :mod:`lmcpipe.models`).
        x_train: training inputs, over which the moments are taken.
        model_seed: the model's seed index, mixed into the subsets' seed.
        options: estimators, geometries and subsampling.

    Returns:
        ``(layer, geometry, estimate)`` triples, by layer, then geometry in
        the order of :data:`GEOMETRIES`, then estimator in request order.
    """
    from lmcpipe.layout import layer_names
    from lmcpipe.statistics import activation_moments
    from lmcpipe.wasserstein import metric_root

    names = layer_names(params)[:-1]
    geometries = [name for name in GEOMETRIES if name in options.geometries]
    # One stream for the example subsets, then one per layer for the unit subsets.
    streams = [np.random.default_rng(child)
               for child in np.random.SeedSequence([options.seed, model_seed]).spawn(len(names) + 1)]
    needs_moments = any(name != "incoming" for name in geometries)
    moments = activation_moments(params, x_train) if needs_moments else None
    subset_moments = []
    if "activations" in geometries:
        for rows in subsets(streams[0], len(x_train), options):
            subset_moments.append(activation_moments(params, x_train[rows]).inputs)

    results = []
    for layer, name in enumerate(names):
        weights = np.asarray(params[name]["kernel"], np.float64).T
        unit_subsets = subsets(streams[layer + 1], len(weights), options)
        for geometry in geometries:
            estimators = geometry_estimators(geometry, options.estimators)
            if geometry == "incoming":
                estimates = point_estimates(weights, estimators, unit_subsets)
            elif geometry == "covariance":
                points = weights @ metric_root(moments.inputs[layer])
                estimates = point_estimates(points, estimators, unit_subsets)
            else:
                estimates = moment_estimates(
                    moments.inputs[layer + 1], len(x_train), estimators,
                    [inputs[layer + 1] for inputs in subset_moments],
                )
            results.extend((layer, geometry, result) for result in estimates)
    return results


def _unusable_reason(params, meta) -> str:
    if meta.get("status") != "ok":
        return f"run status is {meta.get('status')!r}"
    if not all(np.all(np.isfinite(leaf)) for leaves in params.values() for leaf in leaves.values()):
        return "weights are not finite"
    return ""


def dimension_table(models, dataset, options: DimensionOptions | None = None):
    """Return one row per model, hidden layer, geometry and estimator.

    Args:
        models: ``(params, meta)`` pairs as returned by
            :func:`lmcpipe.io.load_checkpoint`.
        dataset: the :class:`~lmcpipe.data.Dataset` the models were trained on.
        options: estimators, geometries and subsampling.

    Columns: :data:`COLUMNS`. A model whose run diverged, or whose weights
    are not finite, gets rows with a ``reason`` and null dimensions.
    """
    import pyarrow as pa

    from lmcpipe.layout import layer_names
    from lmcpipe.spec import TrainSpec

    options = options or DimensionOptions()
    rows = []
    for params, meta in models:
        keys = {**TrainSpec.from_dict(meta["spec"]).run_keys(), "seed": meta["seed"]}
        reason = _unusable_reason(params, meta)
        if reason:
            log.warning("%s: %s; dimensions left null", keys, reason)
            triples = [
                (layer, geometry, _failed(name, 0, 0, reason))
                for layer in range(len(layer_names(params)) - 1)
                for geometry in GEOMETRIES if geometry in options.geometries
                for name in geometry_estimators(geometry, options.estimators)
            ]
        else:
            triples = model_estimates(params, dataset.x_train, meta["seed"], options)
        for layer, geometry, result in triples:
            if result.reason and not reason:
                log.warning("%s, layer %d, %s, %s: %s", keys, layer, geometry, result.estimator, result.reason)
            rows.append({**keys, "layer": layer, "geometry": geometry, **dataclasses.asdict(result)})
        ratios = {geometry: round(result.dimension, 2) for layer, geometry, result in triples
                  if layer == 0 and result.estimator == "participation_ratio"}
        log.info("%s: %d estimates; participation ratio of layer 0 by geometry: %s",
                 keys, len(triples), ratios)
    schema = pa.schema([
        ("dataset", pa.string()), ("depth", pa.int64()), ("width", pa.int64()), ("lr", pa.float64()),
        ("seed", pa.int64()), ("layer", pa.int64()), ("geometry", pa.string()),
        ("estimator", pa.string()), ("dimension", pa.float64()), ("spread", pa.float64()),
        ("n_points", pa.int64()), ("n_removed", pa.int64()), ("reason", pa.string()),
    ])
    return pa.Table.from_pylist([{name: row[name] for name in COLUMNS} for row in rows], schema=schema)


def dimensions_to_file(checkpoints, out, options: DimensionOptions | None = None) -> None:
    """Estimate the dimensions of the models in ``checkpoints`` and write the table to ``out``.

    The dataset and its train/test split are the ones named by the
    checkpoints' training specs, which must agree on them.
    """
    from lmcpipe.data import load_for_spec
    from lmcpipe.io import load_checkpoint, table_metadata, write_table
    from lmcpipe.spec import TrainSpec

    options = options or DimensionOptions()
    models = [load_checkpoint(path) for path in checkpoints]
    if not models:
        raise ValueError("no checkpoints to estimate dimensions of")
    splits = {(spec.dataset, spec.test_fraction, spec.split_seed)
              for spec in (TrainSpec.from_dict(meta["spec"]) for _, meta in models)}
    if len(splits) > 1:
        raise ValueError(
            f"checkpoints {list(map(str, checkpoints))} come from several datasets or splits "
            f"{sorted(splits)}; give checkpoints of one dataset split"
        )
    dataset = load_for_spec(TrainSpec.from_dict(models[0][1]["spec"]))
    hashes = ",".join(sorted({meta["spec_hash"] for _, meta in models}))
    metadata = table_metadata(
        hashes, subsamples=str(options.subsamples),
        subsample_fraction=str(options.subsample_fraction), dimension_seed=str(options.seed),
    )
    write_table(dimension_table(models, dataset, options), out, metadata)
