"""How fast the W2 distance between two networks' neuron measures falls with width.

The bounds of Ferbach et al. (AISTATS 2024, see :mod:`lmcpipe.theory`) rest
on the rate at which two independent empirical measures of m neurons, each
drawn i.i.d. from one distribution on a d-dimensional support, approach each
other in Wasserstein-2 distance: about m^(−1/d). This module measures that
rate on the first hidden layer (incoming weight vectors in R^d, d the input
dimension), with the exact W2 of :func:`lmcpipe.wasserstein.w2_distance` in
the Euclidean metric, for these sources (the ``source`` column):

``gaussian``
    Weights i.i.d. N(0, I_d / d), Flax's LeCun-normal initialisation without
    its truncation.
``uniform``
    Weights i.i.d. uniform on [−1, 1]^d / √d.
``subspace<k>`` (``subspace2``, ...)
    Weights B z / √k with z uniform on [−1, 1]^k and B a random d × k
    matrix with orthonormal columns, drawn once per repeat and shared by the
    two networks: a support of known dimension k < d.
``trained``
    The first hidden layers of the study's trained checkpoints whose width is
    one of the convergence widths, one value per pair of seeds of a setting
    (the ``lr`` column identifies the setting). No network is trained
    here, so only widths of the study appear.

For each source (and learning rate) :func:`fit_slopes` fits
log W2 = a + b · log m over all its (width, repeat) values by least squares
(:func:`scipy.stats.linregress`). The interval of the slope b is
b ± t · stderr with t the (1 + c)/2 quantile of Student's t with n − 2
degrees of freedom, c = ``confidence``. It assumes independent, equally
noisy residuals.

The fit is compared with ``predicted_slope`` = −1 / max(D, 2), D =
``dimension``. D is the known d or k for the synthetic sources. For
``trained`` it is the mean estimate of ``estimator`` (TwoNN by default) on
the incoming weights of the source's models at its largest width. The rate
m^(−1/D) is asymptotic. For a density bounded above and below on a cube,
as for the uniform sources, it holds from D = 3. For any compactly
supported measure it is an upper bound only above D = 4. In dimensions 1
and 2 the rate is about m^(−1/2), with a factor √(log m) in dimension 2,
hence the max(D, 2).
Between the widths of a study (tens to thousands) the measured slope can
differ from the asymptotic one: for d = 64 and widths up to 1024 it is
steeper than −1/64, because the distances have not reached their
asymptotic regime. The ``trained`` slope also includes whatever separates
two trained networks beyond sampling, which need not fall with width.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import zlib

import numpy as np

log = logging.getLogger(__name__)

SYNTHETIC_SOURCES = ("gaussian", "uniform", "subspace")
SOURCES = SYNTHETIC_SOURCES + ("trained",)
DIMENSION_ESTIMATORS = ("twonn", "mle", "participation_ratio")
CONFIDENCE = 0.95

SAMPLE_COLUMNS = ["source", "lr", "width", "repeat", "seed_a", "seed_b", "w2"]
FIT_COLUMNS = [
    "source", "lr", "n", "n_widths", "slope", "intercept", "stderr", "slope_low", "slope_high",
    "confidence", "dimension", "dimension_kind", "predicted_slope", "reason",
]


@dataclasses.dataclass(frozen=True)
class ConvergenceOptions:
    """Settings of :func:`synthetic_samples` and :func:`fit_slopes`.

    Attributes:
        widths: numbers of neurons per network.
        repeats: independent pairs of networks per synthetic source and width.
        seed: root of the synthetic draws.
        sources: synthetic source kinds from :data:`SYNTHETIC_SOURCES`.
        subspace_dimensions: support dimensions k of the ``subspace`` source.
        estimator: estimator of the trained weights' dimension, from
            :data:`DIMENSION_ESTIMATORS`.
        confidence: coverage of the slope interval, in (0, 1).
    """

    widths: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    repeats: int = 5
    seed: int = 0
    sources: tuple[str, ...] = SYNTHETIC_SOURCES
    subspace_dimensions: tuple[int, ...] = (2, 4, 8)
    estimator: str = "twonn"
    confidence: float = CONFIDENCE

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"invalid widths={list(self.widths)}: give at least one width of 1 or more")
        if self.repeats < 1:
            raise ValueError(f"invalid repeats={self.repeats}: must be at least 1")
        unknown = sorted(set(self.sources) - set(SYNTHETIC_SOURCES))
        if unknown:
            raise ValueError(f"unknown synthetic source(s) {unknown}; available: {list(SYNTHETIC_SOURCES)}")
        if any(k < 1 for k in self.subspace_dimensions):
            raise ValueError(f"invalid subspace_dimensions={list(self.subspace_dimensions)}: each must be 1 or more")
        if self.estimator not in DIMENSION_ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; available: {list(DIMENSION_ESTIMATORS)}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"invalid confidence={self.confidence}: must be in (0, 1)")


def source_names(options: ConvergenceOptions, input_dim: int) -> list[str]:
    """Return the synthetic source names, ``subspace`` expanded to one ``subspace<k>`` per k < d."""
    names = []
    for source in options.sources:
        if source != "subspace":
            names.append(source)
            continue
        for k in options.subspace_dimensions:
            if k >= input_dim:
                log.warning("skipping subspace dimension %d: it is not below the input dimension %d", k, input_dim)
                continue
            names.append(f"subspace{k}")
    return names


def draw_weights(source: str, width: int, input_dim: int, rng: np.random.Generator,
                 basis: np.ndarray | None = None) -> np.ndarray:
    """Draw ``width`` incoming weight vectors (rows) of one network from a synthetic source."""
    if source == "gaussian":
        return rng.normal(size=(width, input_dim)) / math.sqrt(input_dim)
    if source == "uniform":
        return rng.uniform(-1.0, 1.0, size=(width, input_dim)) / math.sqrt(input_dim)
    match = re.fullmatch(r"subspace(\d+)", source)
    if match and basis is not None:
        k = int(match.group(1))
        return rng.uniform(-1.0, 1.0, size=(width, k)) / math.sqrt(k) @ basis.T
    raise ValueError(f"unknown synthetic source {source!r}")


def source_dimension(source: str, input_dim: int) -> int:
    """Return the dimension of a synthetic source's support."""
    match = re.fullmatch(r"subspace(\d+)", source)
    return int(match.group(1)) if match else input_dim


def synthetic_samples(input_dim: int, options: ConvergenceOptions) -> list[dict]:
    """Return one row per synthetic source, width and repeat: the W2 between two independent draws.

    Every (source, repeat) has its own generator, seeded by ``options.seed``,
    a checksum of the source name and the repeat index, so adding a width or
    a source leaves the other rows unchanged.
    """
    from lmcpipe.wasserstein import w2_distance

    rows = []
    for source in source_names(options, input_dim):
        for repeat in range(options.repeats):
            rng = np.random.default_rng([options.seed, zlib.crc32(source.encode()), repeat])
            basis = None
            if source.startswith("subspace"):
                k = source_dimension(source, input_dim)
                basis = np.linalg.qr(rng.normal(size=(input_dim, k)))[0]
            for width in sorted(options.widths):
                first = draw_weights(source, width, input_dim, rng, basis)
                second = draw_weights(source, width, input_dim, rng, basis)
                distance, _ = w2_distance(first, second)
                rows.append({"source": source, "lr": None, "width": width, "repeat": repeat,
                             "seed_a": None, "seed_b": None, "w2": distance})
        log.info("%s: %d widths x %d repeats", source, len(options.widths), options.repeats)
    return rows


def trained_samples(models, widths) -> list[dict]:
    """Return one row per pair of trained models of a setting whose width is in ``widths``.

    Args:
        models: ``(params, meta)`` pairs from :func:`lmcpipe.io.load_checkpoint`;
            runs whose status is not ``ok`` are skipped with a warning.
        widths: widths to keep.
    """
    from lmcpipe.layout import hidden_name
    from lmcpipe.spec import TrainSpec
    from lmcpipe.wasserstein import w2_distance

    settings: dict[tuple, list] = {}
    for params, meta in models:
        spec = TrainSpec.from_dict(meta["spec"])
        if spec.width not in widths:
            continue
        if meta.get("status") != "ok":
            log.warning("%s seed %d: skipped because the run status is %r", spec.run_keys(), meta["seed"],
                        meta.get("status"))
            continue
        settings.setdefault((spec.lr, spec.width), []).append((meta["seed"], params))
    rows = []
    for (lr, width), members in sorted(settings.items()):
        members.sort(key=lambda member: member[0])
        repeat = 0
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (seed_a, params_a), (seed_b, params_b) = members[i], members[j]
                first = np.asarray(params_a[hidden_name(0)]["kernel"], np.float64).T
                second = np.asarray(params_b[hidden_name(0)]["kernel"], np.float64).T
                distance, _ = w2_distance(first, second)
                rows.append({"source": "trained", "lr": float(lr), "width": int(width), "repeat": repeat,
                             "seed_a": int(seed_a), "seed_b": int(seed_b), "w2": distance})
                repeat += 1
    return rows


def trained_dimensions(models, estimator: str, widths) -> dict[float, float]:
    """Return, per learning rate, the mean ``estimator`` dimension of the first-layer weights.

    The mean is over the models at the largest of ``widths`` that the
    models of that learning rate have.
    """
    from lmcpipe.dimension import estimate
    from lmcpipe.layout import hidden_name
    from lmcpipe.spec import TrainSpec

    by_lr: dict[float, dict[int, list[float]]] = {}
    for params, meta in models:
        if meta.get("status") != "ok":
            continue
        spec = TrainSpec.from_dict(meta["spec"])
        if spec.width not in widths:
            continue
        weights = np.asarray(params[hidden_name(0)]["kernel"], np.float64).T
        value = estimate(estimator, weights).dimension
        by_lr.setdefault(float(spec.lr), {}).setdefault(spec.width, []).append(value)
    result = {}
    for lr, by_width in by_lr.items():
        values = [value for value in by_width[max(by_width)] if np.isfinite(value)]
        result[lr] = float(np.mean(values)) if values else float("nan")
    return result


def fit_slope(widths: np.ndarray, distances: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Fit log W2 against log width and return slope, intercept, standard error and interval.

    Returns a dict with ``n, n_widths, slope, intercept, stderr, slope_low,
    slope_high, reason``. When fewer than 3 positive values or fewer than 2
    distinct widths remain, the numbers are ``nan`` and ``reason`` explains why.
    """
    from scipy import stats

    widths = np.asarray(widths, np.float64)
    distances = np.asarray(distances, np.float64)
    keep = np.isfinite(distances) & (distances > 0) & (widths > 0)
    widths, distances = widths[keep], distances[keep]
    row = {"n": int(len(widths)), "n_widths": int(len(np.unique(widths))), "slope": float("nan"),
           "intercept": float("nan"), "stderr": float("nan"), "slope_low": float("nan"),
           "slope_high": float("nan"), "reason": ""}
    if len(widths) < 3 or row["n_widths"] < 2:
        row["reason"] = (f"{len(widths)} positive W2 values at {row['n_widths']} width(s); "
                         "the fit needs at least 3 values at 2 widths")
        return row
    fit = stats.linregress(np.log(widths), np.log(distances))
    t = stats.t.ppf((1 + confidence) / 2, len(widths) - 2)
    row.update(slope=float(fit.slope), intercept=float(fit.intercept), stderr=float(fit.stderr),
               slope_low=float(fit.slope - t * fit.stderr), slope_high=float(fit.slope + t * fit.stderr))
    return row


def predicted_slope(dimension: float) -> float:
    """Return the asymptotic log-log slope −1 / max(D, 2) of W2 against width for support dimension D."""
    if not np.isfinite(dimension) or dimension <= 0:
        return float("nan")
    return -1.0 / max(float(dimension), 2.0)


def fit_slopes(samples, input_dim: int, trained_dimension: dict[float, float] | None = None,
               estimator: str = "twonn", confidence: float = CONFIDENCE) -> list[dict]:
    """Return one fit row per source (and learning rate) of ``samples`` (rows of :data:`SAMPLE_COLUMNS`)."""
    import pandas as pd

    frame = pd.DataFrame(samples, columns=SAMPLE_COLUMNS)
    rows = []
    for (source, lr), group in frame.groupby(["source", "lr"], dropna=False, sort=True):
        lr = None if pd.isna(lr) else float(lr)
        fit = fit_slope(group["width"].to_numpy(), group["w2"].to_numpy(), confidence)
        if source == "trained":
            dimension = (trained_dimension or {}).get(lr, float("nan"))
            kind = estimator
        else:
            dimension, kind = float(source_dimension(source, input_dim)), "known"
        reason = fit.pop("reason")
        if not reason and not np.isfinite(dimension):
            reason = f"no finite {estimator} estimate of the trained weights' dimension"
        rows.append({"source": source, "lr": lr, **fit, "confidence": confidence,
                     "dimension": dimension, "dimension_kind": kind,
                     "predicted_slope": predicted_slope(dimension), "reason": reason})
        log.info("%s%s: slope %.4f [%.4f, %.4f], predicted %.4f (dimension %.3g, %s)",
                 source, "" if lr is None else f" lr {lr:g}", rows[-1]["slope"], rows[-1]["slope_low"],
                 rows[-1]["slope_high"], rows[-1]["predicted_slope"], dimension, kind)
    return rows


def convergence_tables(input_dim: int, options: ConvergenceOptions, models=()):
    """Return the sample table and the fit table of a convergence experiment.

    Args:
        input_dim: d, the dimension of the first layer's weight vectors.
        options: widths, repeats, sources and fit settings.
        models: trained ``(params, meta)`` pairs for the ``trained`` source;
            none leaves that source out.
    """
    import pyarrow as pa

    from lmcpipe.layout import hidden_name

    for params, meta in models:
        fan_in = np.shape(params[hidden_name(0)]["kernel"])[0]
        if fan_in != input_dim:
            raise ValueError(f"checkpoint of seed {meta.get('seed')} has input dimension {fan_in}, "
                             f"expected {input_dim}")
    samples = synthetic_samples(input_dim, options)
    dimensions = None
    if models:
        samples += trained_samples(models, set(options.widths))
        dimensions = trained_dimensions(models, options.estimator, set(options.widths))
    fits = fit_slopes(samples, input_dim, dimensions, options.estimator, options.confidence)
    sample_schema = pa.schema([
        ("source", pa.string()), ("lr", pa.float64()), ("width", pa.int64()), ("repeat", pa.int64()),
        ("seed_a", pa.int64()), ("seed_b", pa.int64()), ("w2", pa.float64()),
    ])
    fit_schema = pa.schema([
        ("source", pa.string()), ("lr", pa.float64()), ("n", pa.int64()), ("n_widths", pa.int64()),
        ("slope", pa.float64()), ("intercept", pa.float64()), ("stderr", pa.float64()),
        ("slope_low", pa.float64()), ("slope_high", pa.float64()), ("confidence", pa.float64()),
        ("dimension", pa.float64()), ("dimension_kind", pa.string()), ("predicted_slope", pa.float64()),
        ("reason", pa.string()),
    ])
    return (pa.Table.from_pylist(samples, schema=sample_schema),
            pa.Table.from_pylist(fits, schema=fit_schema))


def convergence_to_files(out, fit_out, options: ConvergenceOptions, input_dim: int | None = None,
                         dataset: str | None = None, checkpoints=()) -> None:
    """Run the convergence experiment and write the sample and fit tables.

    The input dimension is ``input_dim``, else that of ``dataset``, else the
    first checkpoint's fan-in.
    """
    from lmcpipe.io import load_checkpoint, settings_hash, table_metadata, write_table
    from lmcpipe.layout import hidden_name

    models = [load_checkpoint(path) for path in checkpoints]
    if input_dim is None and dataset is not None:
        from lmcpipe.data import load_dataset

        input_dim = load_dataset(dataset).input_dim
    if input_dim is None:
        if not models:
            raise ValueError("no input dimension: give --input-dim, --dataset or checkpoints")
        input_dim = int(np.shape(models[0][0][hidden_name(0)]["kernel"])[0])
    samples, fits = convergence_tables(input_dim, options, models)
    settings = repr(dataclasses.asdict(options)) + f" input_dim={input_dim} " + ",".join(
        sorted({meta["spec_hash"] for _, meta in models})
    )
    metadata = table_metadata(
        settings_hash(settings), convergence_seed=str(options.seed), input_dim=str(input_dim),
        convergence_options=repr(dataclasses.asdict(options)),
    )
    write_table(samples, out, metadata)
    write_table(fits, fit_out, metadata)
