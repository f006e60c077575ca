"""Width bounds for linear mode connectivity, as log10 of the width.

Each bound is the number of hidden units that two independently drawn
networks need for linear mode connectivity with LMC error ε. After the best
permutation of one network's hidden units, the loss on the straight line
between them then stays within ε of the interpolated endpoint losses. The
widths overflow a float at once, so every function returns log10 of the
width, never the width itself.

Bounds, by their name in the ``bound`` column of :func:`bounds_table`:

``two_layer``
    m ≈ F · ε^(−d) hidden units for one hidden layer on d inputs
    (Ferbach, Goujaud, Gidel and Dieuleveut, "Proving Linear Mode
    Connectivity of Neural Networks via Optimal Transport", AISTATS 2024,
    arXiv:2310.19103).
``entezari``
    m ≈ F · ε^(−(2d+4)), the earlier bound for the same setting (Entezari,
    Sedghi, Saukh and Neyshabur, "The Role of Permutation Invariance in
    Linear Mode Connectivity of Neural Networks", ICLR 2022), which Ferbach
    et al. compare against.
``deep``
    Networks whose neuron weight vectors are i.i.d. within each layer (true
    at initialization). With m̃_0 = m_0, the input dimension, layer ℓ needs
    the effective width m̃_ℓ ≈ F · (T_ℓ/ε)^(m̃_(ℓ−1)), so
    log10 m̃_ℓ = m̃_(ℓ−1) · log10(T_ℓ/ε) + log10 F. Ferbach et al. prove an
    upper bound of this form and a lower bound of the same shape, so the
    growth that is exponential in the previous layer's width is not an
    artefact of the proof.
``low_dim``
    The same bound when the neuron weights of layer ℓ lie (approximately)
    in a k_ℓ-dimensional subspace: log10 m̃_ℓ = k_ℓ · log10(T_ℓ/ε) + log10 F,
    where k_ℓ is an estimated dimension, for example the participation
    ratio of :mod:`lmcpipe.dimension`.

The bounds of Ferbach et al. rest on the rate at which the empirical measure
of m neurons approaches its distribution in Wasserstein-2 distance, about
m^(−1/d) for d-dimensional weights. Inverting that rate gives their ε^(−d)
counts.

F = C · (ln(1/(ε·δ)))^p stands for the constant and logarithmic factors that
the Õ(·) of the bounds hides, with the failure probability δ. The defaults
C = 1 and p = 0 give F = 1, so δ has no effect unless p > 0. T_ℓ (default 1)
is the layer constant of the deep bound, set by the paper's proof.

NOTE: only the abstract of Ferbach et al. could be opened here. It confirms
the two-layer result and the upper and lower width bounds for deep networks
with independent neuron weights. The formulas above, the theorem numbers
(the two-layer and deep bound in their Lemma 5.1 and Theorem 5.2, the lower
bound in Theorem 5.3, the low-dimensional variant in Theorem 5.4) and the
exponent 2d+4 of Entezari et al. come from secondary reading notes and were
not checked against either paper. Those notes also state that the deep
results assume m_0 ≥ 5 and that the low-dimensional gain holds only below a
width set by how well the weights fit the subspace. Hence C, p, δ and T_ℓ
are parameters, and every value here is an order of magnitude, not a
guaranteed width.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sys
from collections.abc import Sequence

import pyarrow as pa

DEFAULT_T = 1.0
DEFAULT_CONSTANT = 1.0
DEFAULT_LOG_POWER = 0.0
DEFAULT_DELTA = 0.05

# log10 of the largest float: 10**x overflows for x above this.
MAX_LOG10 = math.log10(sys.float_info.max)

SCHEMA = pa.schema([
    ("bound", pa.string()),
    ("layer", pa.int64()),
    ("epsilon", pa.float64()),
    ("T", pa.float64()),
    ("dimension", pa.float64()),
    ("exponent", pa.float64()),
    ("log10_width", pa.float64()),
    ("log10_log10_width", pa.float64()),
    ("overflow", pa.bool_()),
])


@dataclasses.dataclass(frozen=True)
class LayerWidth:
    """The bound on one hidden layer's width.

    Attributes:
        layer: hidden layer index ℓ, from 1.
        T: the layer constant T_ℓ.
        exponent: the power of T_ℓ/ε, m̃_(ℓ−1) or k_ℓ, and ``inf`` when
            m̃_(ℓ−1) is beyond the float range.
        log10_width: log10 m̃_ℓ, and ``inf`` when it is beyond the float range.
        log10_log10_width: log10(log10 m̃_ℓ), finite one layer further than
            ``log10_width``, and ``None`` when m̃_ℓ ≤ 1.
        overflow: whether ``log10_width`` is ``inf``.
    """

    layer: int
    T: float
    exponent: float
    log10_width: float
    log10_log10_width: float | None
    overflow: bool


def _as_float(name: str, value, where: str = "") -> float:
    """Return ``value`` as a finite float. Errors name ``where``, such as " for layer 2"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid {name}={value!r}{where}: must be a real number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"invalid {name}={value!r}{where}: must be finite")
    return value


def _check_epsilon(epsilon) -> float:
    epsilon = _as_float("epsilon", epsilon)
    if not 0 < epsilon < 1:
        raise ValueError(f"invalid epsilon={epsilon!r}: the LMC error must be in (0, 1)")
    return epsilon


def _check_positive(name: str, value, where: str = "") -> float:
    value = _as_float(name, value, where)
    if value <= 0:
        raise ValueError(f"invalid {name}={value!r}{where}: must be greater than 0")
    return value


def _check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"invalid depth={depth!r}: must be an integer of at least 1")
    return int(depth)


def _per_layer(name: str, values, depth: int) -> list:
    """Return ``values`` as one entry per layer, repeating a single value."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        return [values] * depth
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"invalid {name}={values!r}: give one number or one per layer")
    values = list(values)
    if len(values) == 1:
        return values * depth
    if len(values) != depth:
        raise ValueError(
            f"invalid {name}={values!r}: give one value or {depth} (one per layer), not {len(values)}"
        )
    return values


def _check_T(T, epsilon: float, layer: int) -> float:
    T = _as_float("T", T, f" for layer {layer}")
    # The second test catches a T so close to epsilon that log10(T/epsilon) rounds to 0.
    if T <= epsilon or math.log10(T) <= math.log10(epsilon):
        raise ValueError(
            f"invalid T={T!r} for layer {layer}: must be greater than epsilon={epsilon!r}, "
            "so that T/epsilon > 1"
        )
    return T


def log10_factor(
    epsilon: float,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> float:
    """Return log10 F for the hidden factor F = C · (ln(1/(ε·δ)))^p.

    NOTE: this form of F is an assumption of this module, because the exact
    factors hidden by the Õ(·) of the bounds were not checked in the papers.
    """
    epsilon = _check_epsilon(epsilon)
    constant = _check_positive("constant", constant)
    log_power = _as_float("log_power", log_power)
    if log_power < 0:
        raise ValueError(f"invalid log_power={log_power!r}: must be at least 0")
    delta = _as_float("delta", delta)
    if not 0 < delta < 1:
        raise ValueError(f"invalid delta={delta!r}: the failure probability must be in (0, 1)")
    # epsilon and delta are below 1, so ln(1/(epsilon*delta)) > 0.
    log_term = -math.log(epsilon) - math.log(delta)
    return math.log10(constant) + log_power * math.log10(log_term)


def _log10_or_none(value: float) -> float | None:
    """Return log10(value), ``inf`` for ``inf``, and ``None`` for value ≤ 0."""
    if value <= 0:
        return None
    return math.log10(value)


def _pow10(exponent: float) -> float:
    """Return 10**exponent, or ``inf`` where that exceeds the float range."""
    if exponent > MAX_LOG10:
        return math.inf
    return 10.0**exponent


def log10_two_layer_width(
    epsilon: float,
    dimension: float,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> float:
    """Return log10 m for m = F · ε^(−d), the two-layer width of Ferbach et al. (2024).

    log10 m = d · log10(1/ε) + log10 F, with F from :func:`log10_factor`.
    ``dimension`` is d, the input dimension m_0 (or the dimension of the
    first layer's weight distribution). It is the deep bound's first layer
    with T_1 = 1.
    """
    epsilon = _check_epsilon(epsilon)
    dimension = _check_positive("dimension", dimension)
    factor = log10_factor(epsilon, constant, log_power, delta)
    return -dimension * math.log10(epsilon) + factor


def log10_entezari_width(
    epsilon: float,
    dimension: float,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> float:
    """Return log10 m for m = F · ε^(−(2d+4)), the two-layer width of Entezari et al. (2022).

    log10 m = (2d + 4) · log10(1/ε) + log10 F. The exponent 2d+4 is the
    one Ferbach et al. quote for comparison, taken here from secondary notes.
    """
    epsilon = _check_epsilon(epsilon)
    dimension = _check_positive("dimension", dimension)
    factor = log10_factor(epsilon, constant, log_power, delta)
    return -(2 * dimension + 4) * math.log10(epsilon) + factor


def _next_layer(log10_previous: float, T: float, epsilon: float, factor: float) -> tuple:
    """Return (log10 m̃_ℓ, log10 log10 m̃_ℓ) from log10 m̃_(ℓ−1).

    log10 m̃_ℓ = a · 10**L + b with L = log10 m̃_(ℓ−1), a = log10(T/ε) > 0
    and b = log10 F. The main term a · 10**L has the log10 s = L + log10 a,
    which stays finite one layer longer than log10 m̃_ℓ does.
    """
    slope = math.log10(T) - math.log10(epsilon)
    if math.isinf(log10_previous):
        return math.inf, math.inf
    main_log10 = log10_previous + math.log10(slope)
    previous = _pow10(log10_previous)
    if math.isfinite(previous):
        log10_width = slope * previous + factor  # inf when the product overflows
    else:
        log10_width = _pow10(main_log10) + factor
    if math.isfinite(log10_width):
        return log10_width, _log10_or_none(log10_width)
    # log10(10**s + b) = s + log10(1 + b / 10**s). For large s the ratio
    # underflows to 0, and s alone is then exact to float precision.
    correction = math.log1p(factor * 10.0 ** (-main_log10)) / math.log(10)
    return math.inf, main_log10 + correction


def deep_widths(
    epsilon: float,
    input_dim: float,
    T: float | Sequence[float] = DEFAULT_T,
    depth: int = 1,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> list[LayerWidth]:
    """Compute the deep bound m̃_ℓ ≈ F · (T_ℓ/ε)^(m̃_(ℓ−1)) of Ferbach et al. (2024) per layer.

    Starts from m̃_0 = ``input_dim`` and applies
    log10 m̃_ℓ = m̃_(ℓ−1) · log10(T_ℓ/ε) + log10 F for ℓ = 1, ..., ``depth``.
    ``T`` is one value for every layer or one per layer, each above ε.
    Widths whose log10 exceeds the float range get ``log10_width = inf`` and
    ``overflow = True``; ``log10_log10_width`` stays finite one layer longer.
    The exponent is the real-valued m̃_(ℓ−1), not rounded to an integer.

    Raises:
        ValueError: ε not in (0, 1), a dimension not positive, a T_ℓ not
            above ε, or the wrong number of T values.
    """
    epsilon = _check_epsilon(epsilon)
    input_dim = _check_positive("input_dim", input_dim)
    depth = _check_depth(depth)
    Ts = [_check_T(value, epsilon, layer) for layer, value in enumerate(_per_layer("T", T, depth), 1)]
    factor = log10_factor(epsilon, constant, log_power, delta)

    widths = []
    log10_previous = math.log10(input_dim)
    for layer, layer_T in enumerate(Ts, 1):
        log10_width, log10_log10_width = _next_layer(log10_previous, layer_T, epsilon, factor)
        widths.append(LayerWidth(
            layer=layer,
            T=layer_T,
            exponent=_pow10(log10_previous),
            log10_width=log10_width,
            log10_log10_width=log10_log10_width,
            overflow=math.isinf(log10_width),
        ))
        log10_previous = log10_width
    return widths


def low_dimensional_widths(
    epsilon: float,
    dimensions: Sequence[float],
    T: float | Sequence[float] = DEFAULT_T,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> list[LayerWidth]:
    """Compute m̃_ℓ ≈ F · (T_ℓ/ε)^(k_ℓ) per layer, the low-dimensional variant.

    ``dimensions`` gives k_ℓ for each layer ℓ = 1, ..., len(dimensions): the
    (estimated, possibly fractional) dimension of the support of layer ℓ's
    neuron weight distribution, which replaces the exponent m̃_(ℓ−1) of
    :func:`deep_widths`. ``T`` is one value or one per layer, each above ε.
    """
    epsilon = _check_epsilon(epsilon)
    if isinstance(dimensions, (str, bytes)) or not isinstance(dimensions, Sequence) or not dimensions:
        raise ValueError(f"invalid dimensions={dimensions!r}: give one dimension per layer")
    ks = [_check_positive("dimension", k, f" for layer {layer}") for layer, k in enumerate(dimensions, 1)]
    Ts = [_check_T(value, epsilon, layer) for layer, value in enumerate(_per_layer("T", T, len(ks)), 1)]
    factor = log10_factor(epsilon, constant, log_power, delta)

    widths = []
    for layer, (k, layer_T) in enumerate(zip(ks, Ts), 1):
        log10_width = k * (math.log10(layer_T) - math.log10(epsilon)) + factor
        widths.append(LayerWidth(
            layer=layer,
            T=layer_T,
            exponent=k,
            log10_width=log10_width,
            log10_log10_width=_log10_or_none(log10_width),
            overflow=False,
        ))
    return widths


def bounds_table(
    epsilons: float | Sequence[float],
    input_dim: float,
    depth: int = 1,
    T: float | Sequence[float] = DEFAULT_T,
    dimensions: Sequence[float] | None = None,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> pa.Table:
    """Return every bound for every ε as a table, one row per bound, ε and layer.

    For each ε: a ``two_layer`` and an ``entezari`` row for d = ``input_dim``,
    ``depth`` rows of the ``deep`` bound, and, when ``dimensions`` is given
    (one value or one per layer), ``depth`` rows of the ``low_dim`` bound.

    Columns:

    - ``bound``: the bound's name, as in the module docstring.
    - ``layer``: ℓ, and 1 for the two-layer bounds.
    - ``epsilon``: the LMC error ε.
    - ``T``: T_ℓ, null for the two-layer bounds.
    - ``dimension``: the dimension that sets the exponent (d, m̃_(ℓ−1) or k_ℓ).
    - ``exponent``: the power of 1/ε or T_ℓ/ε (d, 2d + 4, m̃_(ℓ−1) or k_ℓ),
      ``inf`` past the float range.
    - ``log10_width`` and ``log10_log10_width``: as in :class:`LayerWidth`.
      The latter is null when the width is at most 1.
    - ``overflow``: whether ``log10_width`` is ``inf``.
    """
    if isinstance(epsilons, numbers.Real) and not isinstance(epsilons, bool):
        epsilons = [epsilons]
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence) or not epsilons:
        raise ValueError(f"invalid epsilons={epsilons!r}: give at least one LMC error")
    input_dim = _check_positive("input_dim", input_dim)
    depth = _check_depth(depth)
    if dimensions is not None:
        dimensions = _per_layer("dimensions", dimensions, depth)

    rows = []
    for epsilon in epsilons:
        epsilon = _check_epsilon(epsilon)
        for bound, function, exponent in (
            ("two_layer", log10_two_layer_width, input_dim),
            ("entezari", log10_entezari_width, 2 * input_dim + 4),
        ):
            log10_width = function(epsilon, input_dim, constant, log_power, delta)
            rows.append({
                "bound": bound, "layer": 1, "epsilon": epsilon, "T": None,
                "dimension": input_dim, "exponent": exponent, "log10_width": log10_width,
                "log10_log10_width": _log10_or_none(log10_width), "overflow": False,
            })
        for width in deep_widths(epsilon, input_dim, T, depth, constant, log_power, delta):
            rows.append(_layer_row("deep", epsilon, width))
        if dimensions is not None:
            for width in low_dimensional_widths(epsilon, dimensions, T, constant, log_power, delta):
                rows.append(_layer_row("low_dim", epsilon, width))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _layer_row(bound: str, epsilon: float, width: LayerWidth) -> dict:
    # In the layer bounds the dimension that sets the exponent is the exponent.
    return {
        "bound": bound, "layer": width.layer, "epsilon": epsilon, "T": width.T,
        "dimension": width.exponent, "exponent": width.exponent,
        "log10_width": width.log10_width, "log10_log10_width": width.log10_log10_width,
        "overflow": width.overflow,
    }


def bounds_to_file(out, **parameters) -> pa.Table:
    """Compute :func:`bounds_table` and, when ``out`` is given, write it to Parquet atomically."""
    from lmcpipe.io import settings_hash, table_metadata, write_table

    table = bounds_table(**parameters)
    if out is not None:
        # The parameters are recorded because the bounds depend on them.
        settings = json.dumps(parameters, sort_keys=True)
        metadata = table_metadata(settings_hash(settings), bounds_parameters=settings)
        write_table(table, out, metadata)
    return table


STUDY_SCHEMA = (
    SCHEMA.append(pa.field("geometry", pa.string()))
    .append(pa.field("estimator", pa.string()))
    .append(pa.field("model_width", pa.int64()))
)


def estimated_layer_dimensions(dimensions, geometry: str, estimator: str) -> tuple[list[float], int] | None:
    """Return per-layer estimated dimensions from a study's dimension table, and the width they come from.

    Each layer's value is the median of ``estimator`` in ``geometry`` over
    the models of the largest width that has a finite estimate for every
    layer, because the widest networks sample their weight distribution
    best. Returns ``None`` when no width qualifies.

    Args:
        dimensions: a ``dimensions.parquet`` table as a pandas DataFrame.
    """
    rows = dimensions[(dimensions["geometry"] == geometry) & (dimensions["estimator"] == estimator)]
    rows = rows[rows["dimension"].notna() & (rows["dimension"] > 0)]
    layers = sorted(dimensions["layer"].unique())
    for width in sorted(rows["width"].unique(), reverse=True):
        medians = rows[rows["width"] == width].groupby("layer")["dimension"].median()
        if sorted(medians.index) == layers:
            return [float(medians[layer]) for layer in layers], int(width)
    return None


def study_bounds_table(
    dimensions,
    epsilons: Sequence[float],
    input_dim: float,
    estimators: Sequence[str] = ("participation_ratio", "twonn"),
    T: float | Sequence[float] = DEFAULT_T,
    constant: float = DEFAULT_CONSTANT,
    log_power: float = DEFAULT_LOG_POWER,
    delta: float = DEFAULT_DELTA,
) -> pa.Table:
    """Return the bounds for a study's input dimension and its estimated layer dimensions.

    The rows of :func:`bounds_table` without ``dimensions`` (depth = the
    number of hidden layers in ``dimensions``), then ``low_dim`` rows for
    every geometry of ``dimensions`` and estimator of ``estimators``, with
    k_ℓ from :func:`estimated_layer_dimensions`. Extra columns: ``geometry``
    and ``estimator`` of the k_ℓ, and ``model_width``, the width of the
    models they come from (all null for the rows that use only d).
    """
    depth = int(dimensions["layer"].max()) + 1
    parameters = {"T": T, "constant": constant, "log_power": log_power, "delta": delta}
    base = bounds_table(list(epsilons), input_dim, depth, **parameters).to_pylist()
    rows = [{**row, "geometry": None, "estimator": None, "model_width": None} for row in base]
    for geometry in sorted(dimensions["geometry"].unique()):
        for estimator in estimators:
            found = estimated_layer_dimensions(dimensions, geometry, estimator)
            if found is None:
                continue
            ks, width = found
            for epsilon in epsilons:
                for layer_width in low_dimensional_widths(epsilon, ks, T, constant, log_power, delta):
                    row = _layer_row("low_dim", epsilon, layer_width)
                    rows.append({**row, "geometry": geometry, "estimator": estimator, "model_width": width})
    return pa.Table.from_pylist(rows, schema=STUDY_SCHEMA)


def study_bounds_to_file(dimensions_path, out, **parameters) -> pa.Table:
    """Compute :func:`study_bounds_table` from a dimension table on disk and write it to ``out``."""
    from lmcpipe.io import metadata_of, read_table, settings_hash, table_metadata, write_table

    dimensions = read_table(dimensions_path).to_pandas()
    missing = sorted({"width", "layer", "geometry", "estimator", "dimension"} - set(dimensions.columns))
    if missing:
        raise ValueError(
            f"{dimensions_path}: not a dimension table (missing columns {', '.join(missing)}); "
            "give the study's results/tables/dimensions.parquet"
        )
    if dimensions.empty:
        raise ValueError(f"{dimensions_path}: dimension table has no rows")
    table = study_bounds_table(dimensions, **parameters)
    if out is not None:
        recorded = {key: list(value) if isinstance(value, (list, tuple)) else value
                    for key, value in parameters.items()}
        settings = json.dumps(recorded, sort_keys=True)
        source = metadata_of(read_table(dimensions_path)).get("lmcpipe.config_hash", "")
        metadata = table_metadata(settings_hash(source + settings), bounds_parameters=settings)
        write_table(table, out, metadata)
    return table
