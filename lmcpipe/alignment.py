"""Alignment of model B's hidden units to model A's.

Every method returns one permutation per hidden layer (see
:mod:`lmcpipe.permutation` for the convention) and the value of the objective
it maximised, summed over layers. Methods, by their config name:

``naive``
    The identity: no permutation. The baseline.
``wm``
    Weight matching of Git Re-Basin (Ainsworth et al., 2023). Maximises
    :math:`\\sum_k \\langle \\theta_A^{(k)}, \\pi(\\theta_B)^{(k)} \\rangle` over
    every parameter array k by coordinate descent: for one layer at a time,
    with the other permutations fixed, the score matrix
    :math:`C_{ij} = \\sum_{(k,a)} \\langle A^{(k)}_{i}, B'^{(k)}_{j} \\rangle`
    over every array k and axis a that the layer's permutation touches (slices
    along a, B' permuted on its other axes) is solved exactly by linear
    assignment. Layers are visited in a seeded random order; it stops when a
    full pass improves no layer.
``wm_incoming``
    The same coordinate descent restricted to the hidden layers' kernels
    (Ferbach et al., 2024, "naive WM"): maximises
    :math:`\\sum_l \\sum_i \\langle w^A_{l,i}, w^B_{l,\\pi_l(i)} \\rangle` over
    incoming weight vectors, B's input axis permuted by the previous layer's
    permutation.
``wm_cov``
    Covariance-aware weight matching (Ferbach et al., 2024): layer by layer
    from the input, maximises :math:`\\sum_i (w^A_i)^\\top \\Sigma\\, w^B_{\\pi(i)}`
    with :math:`\\Sigma = E[x x^\\top]` the uncentred second moment of model
    A's input to the layer over the training set (raw inputs for the first
    layer, A's post-ReLU outputs after that). Because
    :math:`E[(w_A^\\top x - w_B^\\top x)^2] = (w_A - w_B)^\\top \\Sigma (w_A - w_B)`,
    this minimises the expected squared pre-activation gap (biases aside).
``am``
    Activation matching: per hidden layer, maximises the trace of the
    cross-covariance :math:`\\sum_i \\mathrm{Cov}(a^A_i, a^B_{\\pi(i)})` of the
    two models' post-ReLU outputs over the training set.
``am_corr``
    As ``am`` with the Pearson correlation in place of the covariance; a unit
    with zero variance (dead on the whole training set) correlates 0 with
    every unit.
``sinkhorn``
    Entropic optimal transport between the neuron clouds, layer by layer from
    the input: POT's log-domain Sinkhorn between uniform measures on A's and
    B's incoming weight vectors (B's input axis permuted by the previous
    layer's permutation) with squared Euclidean cost scaled to a maximum of
    1, regulariser ``sinkhorn_reg``; the plan is rounded to the permutation
    that keeps the most mass (linear assignment on the plan). The objective
    is the rounded permutation's transport cost (mean squared distance),
    summed over layers, so lower is better for this method only.

Every assignment is solved exactly with
:func:`scipy.optimize.linear_sum_assignment`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from lmcpipe.permutation import (
    PermutationSpec,
    ParamKey,
    check_spec,
    identity_permutations,
    permutation_spec,
    permute_array,
)

if TYPE_CHECKING:
    from lmcpipe.statistics import Moments

log = logging.getLogger(__name__)

DEFAULT_MAX_PASSES = 100


class PassLimitWarning(RuntimeWarning):
    """Coordinate descent stopped at its pass limit before converging."""


class AlignmentError(ValueError):
    """An alignment method failed to produce a trustworthy permutation."""


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """Settings shared by the alignment methods.

    Attributes:
        seed: seed (or seed sequence) of the random layer order of ``wm`` and
            ``wm_incoming``.
        max_passes: pass limit of their coordinate descent.
        sinkhorn_reg: entropic regulariser of ``sinkhorn``, relative to the
            largest squared distance between two neurons of the layer.
        sinkhorn_max_iter: iteration limit of Sinkhorn.
        sinkhorn_tol: largest accepted marginal error of the Sinkhorn plan,
            relative to the uniform mass 1/n of a neuron.
    """

    seed: int | tuple[int, ...] = 0
    max_passes: int = DEFAULT_MAX_PASSES
    sinkhorn_reg: float = 0.01
    sinkhorn_max_iter: int = 100_000
    sinkhorn_tol: float = 1e-3


@dataclasses.dataclass
class AlignmentResult:
    """Permutations found by one method for one pair, and how it got there.

    Attributes:
        method: config name of the method.
        perms: hidden layer name to permutation of model B's units.
        objective: final value of the method's objective (``nan`` for
            ``naive``, which optimises nothing).
        objectives: objective after each full pass (one entry for the
            layer-by-layer methods).
        passes: full passes over the layers.
        converged: whether the stopping rule was met before the pass limit.
        seconds: wall time of the alignment, statistics excluded.
    """

    method: str
    perms: dict[str, np.ndarray]
    objective: float
    objectives: list[float]
    passes: int
    converged: bool
    seconds: float = 0.0


def _as_float64(params) -> dict[str, dict[str, np.ndarray]]:
    return {
        layer: {name: np.asarray(value, dtype=np.float64) for name, value in leaves.items()}
        for layer, leaves in params.items()
    }


def _objective(spec, keys, params_a, params_b, perms) -> float:
    total = 0.0
    for key in keys:
        permuted = permute_array(params_b[key[0]][key[1]], spec.axes[key], perms)
        total += float(np.vdot(params_a[key[0]][key[1]], permuted))
    return total


def coordinate_descent(
    spec: PermutationSpec,
    params_a,
    params_b,
    keys: list[ParamKey],
    rng: np.random.Generator,
    max_passes: int = DEFAULT_MAX_PASSES,
) -> tuple[dict[str, np.ndarray], list[float], bool]:
    """Maximise the summed inner product of the arrays ``keys`` over permutations.

    The score matrix of a layer is built in float32, which halves the time
    of its matrix products. The candidate assignment is then scored
    exactly in float64 against the current one and kept only if it is
    better by more than a relative 1e-12. The float64 objective therefore
    never decreases from one pass to the next.

    Returns:
        ``(perms, objectives, converged)``, with the objective after each pass.

    Warns:
        PassLimitWarning: ``max_passes`` passes ran and the last one still
            improved a layer.
    """
    exact_a = _as_float64(params_a)
    exact_b = _as_float64(params_b)
    perms = identity_permutations(spec)
    touched = {
        name: [(key, axis) for key, axis in spec.touching(name) if key in keys]
        for name in spec.sizes
    }
    # A's slices along each touched axis never change: flatten them once.
    slices_a = {
        (key, axis): np.ascontiguousarray(
            np.moveaxis(exact_a[key[0]][key[1]], axis, 0).reshape(spec.sizes[name], -1)
        )
        for name in spec.sizes
        for key, axis in touched[name]
    }
    single_a = {item: value.astype(np.float32) for item, value in slices_a.items()}
    objectives: list[float] = []
    for _ in range(max_passes):
        improved = False
        for name in rng.permutation(list(spec.sizes)):
            if not touched[name]:
                continue
            size = spec.sizes[name]
            score = np.zeros((size, size), np.float32)
            slices_b = {}
            for key, axis in touched[name]:
                b = permute_array(exact_b[key[0]][key[1]], spec.axes[key], perms, skip=name)
                slices_b[(key, axis)] = np.ascontiguousarray(np.moveaxis(b, axis, 0).reshape(size, -1))
                score += single_a[(key, axis)] @ slices_b[(key, axis)].astype(np.float32).T
            _, candidate = linear_sum_assignment(score, maximize=True)
            if np.array_equal(candidate, perms[name]):
                continue

            def exact_score(perm):
                return sum(
                    float(np.vdot(slices_a[item], slices_b[item][perm])) for item in slices_b
                )

            old, new = exact_score(perms[name]), exact_score(candidate)
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[name] = candidate
                improved = True
        objectives.append(_objective(spec, keys, exact_a, exact_b, perms))
        if not improved:
            return perms, objectives, True
    message = (
        f"weight matching stopped at the pass limit ({max_passes}) while still "
        "improving; raise alignment.max_passes"
    )
    warnings.warn(message, PassLimitWarning, stacklevel=2)
    log.warning(message)
    return perms, objectives, False


def incoming_vectors(
    params, layer: str, spec: PermutationSpec, perms: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """Return the ``(units, fan_in)`` incoming weights of ``layer``.

    With ``perms``, the input axis is permuted by the previous layer's
    permutation, which brings model B's inputs into model A's unit order.
    """
    kernel = np.asarray(params[layer]["kernel"], np.float64)
    input_perm = spec.axes[(layer, "kernel")][0]
    if perms is not None and input_perm is not None:
        kernel = kernel[perms[input_perm], :]
    return kernel.T


def layerwise(spec: PermutationSpec, score_of: Callable) -> tuple[dict[str, np.ndarray], list[float], bool]:
    """Solve one assignment per hidden layer, from the input to the output.

    ``score_of(index, name, perms)`` returns the score matrix of layer
    ``index`` given the permutations already chosen for earlier layers.
    Each layer's score depends on earlier layers only, so one sweep is exact.
    """
    perms = identity_permutations(spec)
    total = 0.0
    for index, name in enumerate(spec.sizes):
        score = score_of(index, name, perms)
        rows, cols = linear_sum_assignment(score, maximize=True)
        perms[name] = cols
        total += float(score[rows, cols].sum())
    return perms, [total], True


def _naive(spec, params_a, params_b, rng, options, moments):
    return identity_permutations(spec), [], True


def _wm(spec, params_a, params_b, rng, options, moments):
    return coordinate_descent(spec, params_a, params_b, list(spec.axes), rng, options.max_passes)


def _wm_incoming(spec, params_a, params_b, rng, options, moments):
    keys = [(name, "kernel") for name in spec.sizes]
    return coordinate_descent(spec, params_a, params_b, keys, rng, options.max_passes)


def _wm_cov(spec, params_a, params_b, rng, options, moments):
    def score_of(index, name, perms):
        w_a = incoming_vectors(params_a, name, spec)
        w_b = incoming_vectors(params_b, name, spec, perms)
        return w_a @ moments.inputs[index] @ w_b.T

    return layerwise(spec, score_of)


def _am(spec, params_a, params_b, rng, options, moments):
    return layerwise(spec, lambda index, name, perms: moments.hidden_covariance(index)[0])


def _am_corr(spec, params_a, params_b, rng, options, moments):
    def score_of(index, name, perms):
        cov, var_a, var_b = moments.hidden_covariance(index)
        scale = np.sqrt(np.outer(var_a, var_b))
        return np.divide(cov, scale, out=np.zeros_like(cov), where=scale > 0)

    return layerwise(spec, score_of)


def sinkhorn_plan(cost: np.ndarray, reg: float, max_iter: int, tol: float) -> np.ndarray:
    """Return the entropic OT plan between uniform measures for ``cost`` (scaled to max 1).

    Raises:
        AlignmentError: the plan is not finite, carries no mass, or misses
            the uniform marginals by more than ``tol`` of a neuron's mass.
            POT returns such plans with only a warning when the regulariser
            is too small or the iteration limit is hit.
    """
    import ot

    n, m = cost.shape
    largest = float(cost.max())
    scaled = cost / largest if largest > 0 else cost
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.sinkhorn(a, b, scaled, reg, method="sinkhorn_log", numItermax=max_iter,
                           stopThr=tol / (10 * max(n, m)))
    plan = np.asarray(plan, np.float64)
    advice = "raise alignment.sinkhorn_reg or alignment.sinkhorn_max_iter"
    if not np.all(np.isfinite(plan)):
        raise AlignmentError(f"Sinkhorn plan is not finite (reg={reg}); {advice}")
    if plan.sum() < 0.5:
        raise AlignmentError(f"Sinkhorn plan is degenerate: total mass {plan.sum():.3g} (reg={reg}); {advice}")
    error = max(np.abs(plan.sum(axis=1) - a).max() * n, np.abs(plan.sum(axis=0) - b).max() * m)
    if error > tol:
        raise AlignmentError(
            f"Sinkhorn did not converge: marginal error {error:.3g} of a neuron's mass "
            f"after at most {max_iter} iterations (reg={reg}); {advice}"
        )
    return plan


def _sinkhorn(spec, params_a, params_b, rng, options, moments):
    perms = identity_permutations(spec)
    total = 0.0
    for name in spec.sizes:
        w_a = incoming_vectors(params_a, name, spec)
        w_b = incoming_vectors(params_b, name, spec, perms)
        cost = (
            np.sum(w_a**2, axis=1)[:, None] + np.sum(w_b**2, axis=1)[None, :] - 2 * w_a @ w_b.T
        )
        cost = np.maximum(cost, 0.0)
        plan = sinkhorn_plan(cost, options.sinkhorn_reg, options.sinkhorn_max_iter, options.sinkhorn_tol)
        rows, cols = linear_sum_assignment(plan, maximize=True)
        perms[name] = cols
        total += float(cost[rows, cols].mean())
    return perms, [total], True


@dataclasses.dataclass(frozen=True)
class Method:
    """An alignment method and the activation statistics it needs."""

    run: Callable
    needs_moments: bool = False


METHODS: dict[str, Method] = {
    "naive": Method(_naive),
    "wm": Method(_wm),
    "wm_incoming": Method(_wm_incoming),
    "wm_cov": Method(_wm_cov, needs_moments=True),
    "am": Method(_am, needs_moments=True),
    "am_corr": Method(_am_corr, needs_moments=True),
    "sinkhorn": Method(_sinkhorn),
}


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; available: {sorted(METHODS)}")
    return METHODS[method]


def align(
    method: str,
    params_a: Mapping,
    params_b: Mapping,
    options: AlignOptions | None = None,
    moments: Moments | None = None,
) -> AlignmentResult:
    """Align model B to model A with ``method`` and time it.

    Args:
        method: a key of :data:`METHODS`.
        params_a, params_b: MLP parameter trees of identical shapes.
        options: method settings; defaults of :class:`AlignOptions` if None.
        moments: activation statistics of the pair over the training set
            (:func:`lmcpipe.statistics.activation_moments` with both models),
            required by ``wm_cov``, ``am`` and ``am_corr``.
    """
    entry = check_method(method)
    options = options or AlignOptions()
    if entry.needs_moments and (moments is None or not moments.cross):
        raise ValueError(
            f"method {method!r} needs activation statistics of both models over the training set"
        )
    spec = permutation_spec(params_a)
    check_spec(spec, params_b)
    rng = np.random.default_rng(options.seed)
    start = time.perf_counter()
    perms, objectives, converged = entry.run(spec, params_a, params_b, rng, options, moments)
    seconds = time.perf_counter() - start
    return AlignmentResult(
        method=method,
        perms={name: np.asarray(perm, dtype=np.int64) for name, perm in perms.items()},
        objective=objectives[-1] if objectives else float("nan"),
        objectives=objectives,
        passes=len(objectives),
        converged=converged,
        seconds=seconds,
    )


def load_models(checkpoints) -> tuple[list[tuple[dict, dict]], int]:
    """Load checkpoints of one setting, skipping diverged runs with a warning.

    Returns:
        ``(models, n_excluded)``: the ``(params, meta)`` of every run with
        status ``ok``, in seed order, and the number of runs left out.
    """
    from lmcpipe.io import load_checkpoint

    models = []
    excluded = 0
    for path in checkpoints:
        params, meta = load_checkpoint(path)
        if meta.get("status") != "ok":
            log.warning("%s: run status is %r; excluded from pairs", path, meta.get("status"))
            excluded += 1
            continue
        models.append((params, meta))
    hashes = {meta["spec_hash"] for _, meta in models}
    if len(hashes) > 1:
        raise ValueError(
            f"checkpoints {list(map(str, checkpoints))} come from different settings "
            f"(spec hashes {sorted(hashes)}); pairs need identical settings"
        )
    if len(models) < 2:
        log.warning("%d run(s) with status ok among %d checkpoint(s): no pair to align",
                    len(models), len(checkpoints))
    return sorted(models, key=lambda model: model[1]["seed"]), excluded


PAIRINGS = ("all", "disjoint")


def seed_pairs(models, pairing: str = "all") -> list[tuple[int, int]]:
    """Return index pairs ``(i, j)``, ``i < j``, of the models to align.

    ``models`` are sorted by seed index, as from :func:`load_models`. With
    ``pairing="all"`` every unordered pair is returned. With ``"disjoint"``
    the models with seeds 2k and 2k + 1 form a pair, so no network is in two
    pairs. A model whose partner is missing, because the seed count is odd or
    a run diverged, is left out with a log message.
    """
    if pairing == "all":
        return [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
    if pairing != "disjoint":
        raise ValueError(f"unknown pairing {pairing!r}; expected one of {list(PAIRINGS)}")
    index_of = {meta["seed"]: index for index, (_, meta) in enumerate(models)}
    pairs = []
    for seed, index in index_of.items():
        partner = seed + 1 if seed % 2 == 0 else seed - 1
        if partner not in index_of:
            log.info("seed %d has no partner (seed %d) for disjoint pairs; left out", seed, partner)
        elif seed % 2 == 0:
            pairs.append((index, index_of[partner]))
    return sorted(pairs)


def alignment_table(
    models, methods, options: AlignOptions | None = None, dataset=None, pairing: str = "all"
):
    """Align pairs of ``models`` with every method; one row per pair, method and layer.

    Args:
        models: ``(params, meta)`` of one setting, from :func:`load_models`.
        methods: method names.
        options: method settings; the random layer order of each pair is
            seeded with ``(options.seed, seed_a, seed_b)``.
        dataset: the models' dataset, loaded from their spec when a method
            needs activation statistics and none is given.
        pairing: which pairs to align, see :func:`seed_pairs`.

    Returns:
        A table with the run keys, ``seed_a, seed_b, method, layer,
        permutation`` (``list<int32>``: unit of B matched with each unit of
        A), ``objective, passes, converged, seconds`` and
        ``statistics_seconds`` (time to compute the pair's activation
        statistics over the training set, shared by the methods that need
        them).
    """
    import pyarrow as pa

    from lmcpipe.spec import TrainSpec

    options = options or AlignOptions()
    needs_moments = any(check_method(method).needs_moments for method in methods)
    if needs_moments and dataset is None and models:
        from lmcpipe.data import load_for_spec

        dataset = load_for_spec(TrainSpec.from_dict(models[0][1]["spec"]))
    rows = []
    for i, j in seed_pairs(models, pairing):
        (params_a, meta_a), (params_b, meta_b) = models[i], models[j]
        keys = TrainSpec.from_dict(meta_a["spec"]).run_keys()
        moments, statistics_seconds = None, 0.0
        if needs_moments:
            from lmcpipe.statistics import activation_moments

            start = time.perf_counter()
            moments = activation_moments(params_a, dataset.x_train, params_b)
            statistics_seconds = time.perf_counter() - start
        pair_options = dataclasses.replace(options, seed=(options.seed, meta_a["seed"], meta_b["seed"]))
        for method in methods:
            result = align(method, params_a, params_b, pair_options, moments)
            log.info(
                "seeds %d-%d %s: objective %.6g after %d pass(es) in %.3f s",
                meta_a["seed"], meta_b["seed"], method, result.objective, result.passes, result.seconds,
            )
            for layer, name in enumerate(result.perms):
                rows.append({
                    **keys,
                    "seed_a": meta_a["seed"],
                    "seed_b": meta_b["seed"],
                    "method": method,
                    "layer": layer,
                    "permutation": result.perms[name].astype(np.int32).tolist(),
                    "objective": result.objective,
                    "passes": result.passes,
                    "converged": result.converged,
                    "seconds": result.seconds,
                    "statistics_seconds": statistics_seconds if check_method(method).needs_moments else 0.0,
                })
    from lmcpipe.spec import run_key_fields

    schema = pa.schema(run_key_fields() + [
        ("seed_a", pa.int64()), ("seed_b", pa.int64()),
        ("method", pa.string()), ("layer", pa.int32()),
        ("permutation", pa.list_(pa.int32())), ("objective", pa.float64()),
        ("passes", pa.int32()), ("converged", pa.bool_()), ("seconds", pa.float64()),
        ("statistics_seconds", pa.float64()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def permutations_of(table, seed_a: int, seed_b: int, method: str, names: list[str]) -> dict[str, np.ndarray]:
    """Read back the permutations of one pair and method from an alignment table."""
    rows = [
        row for row in table.to_pylist()
        if row["seed_a"] == seed_a and row["seed_b"] == seed_b and row["method"] == method
    ]
    if len(rows) != len(names):
        raise ValueError(
            f"alignment table has {len(rows)} layer(s) for seeds {seed_a}-{seed_b} "
            f"and method {method!r}, expected {len(names)}"
        )
    rows.sort(key=lambda row: row["layer"])
    return {name: np.asarray(row["permutation"], np.int64) for name, row in zip(names, rows)}


def align_to_file(
    checkpoints, methods, out, options: AlignOptions | None = None, pairing: str = "all"
) -> None:
    """Align pairs of the given checkpoints and write the alignment table to ``out``."""
    from lmcpipe.io import table_metadata, write_table

    for method in methods:
        check_method(method)
    models, _ = load_models(checkpoints)
    table = alignment_table(models, methods, options, pairing=pairing)
    hashes = sorted({meta["spec_hash"] for _, meta in models})
    write_table(table, out, table_metadata(",".join(hashes)))
