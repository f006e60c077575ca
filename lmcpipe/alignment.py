"""Alignment of model B's hidden units to model A's.

Every method returns one permutation per hidden layer (see
:mod:`lmcpipe.permutation` for the convention) and the value of the objective
it maximised. Methods, by their config name:

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
    The same coordinate descent restricted to each layer's incoming kernel
    (Ferbach et al., 2024, "naive WM"): maximises
    :math:`\\sum_i \\langle w^A_i, w^B_{\\pi(i)} \\rangle` with B's input axis
    permuted by the previous layer's permutation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Callable, Mapping

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

log = logging.getLogger(__name__)

DEFAULT_MAX_PASSES = 100


class PassLimitWarning(RuntimeWarning):
    """Coordinate descent stopped at its pass limit before converging."""


@dataclasses.dataclass
class AlignmentResult:
    """Permutations found by one method for one pair, and how it got there.

    Attributes:
        method: config name of the method.
        perms: hidden layer name to permutation of model B's units.
        objective: final value of the maximised objective (``nan`` for
            ``naive``, which maximises nothing).
        objectives: objective after each full pass (coordinate descent only).
        passes: full passes over the layers.
        converged: whether the stopping rule was met before the pass limit.
        seconds: wall time of the alignment.
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

    Returns:
        ``(perms, objectives, converged)``, with the objective after each pass.
        The objective never decreases: a layer's permutation changes only when
        its assignment score rises by more than a relative 1e-12.

    Warns:
        PassLimitWarning: ``max_passes`` passes ran and the last one still
            improved a layer.
    """
    params_a = _as_float64(params_a)
    params_b = _as_float64(params_b)
    perms = identity_permutations(spec)
    touched = {
        name: [(key, axis) for key, axis in spec.touching(name) if key in keys]
        for name in spec.sizes
    }
    objectives: list[float] = []
    for _ in range(max_passes):
        improved = False
        for name in rng.permutation(list(spec.sizes)):
            if not touched[name]:
                continue
            size = spec.sizes[name]
            score = np.zeros((size, size))
            for (layer, param), axis in touched[name]:
                a = np.moveaxis(params_a[layer][param], axis, 0).reshape(size, -1)
                b = permute_array(params_b[layer][param], spec.axes[(layer, param)], perms, skip=name)
                b = np.moveaxis(b, axis, 0).reshape(size, -1)
                score += a @ b.T
            rows, cols = linear_sum_assignment(score, maximize=True)
            old = score[np.arange(size), perms[name]].sum()
            new = score[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[name] = cols
                improved = True
        objectives.append(_objective(spec, keys, params_a, params_b, perms))
        if not improved:
            return perms, objectives, True
    message = (
        f"weight matching stopped at the pass limit ({max_passes}) while still "
        "improving; raise alignment.max_passes"
    )
    warnings.warn(message, PassLimitWarning, stacklevel=2)
    log.warning(message)
    return perms, objectives, False


def _naive(spec, params_a, params_b, rng, max_passes):
    return identity_permutations(spec), [], True


def _wm(spec, params_a, params_b, rng, max_passes):
    return coordinate_descent(spec, params_a, params_b, list(spec.axes), rng, max_passes)


def _wm_incoming(spec, params_a, params_b, rng, max_passes):
    keys = [(name, "kernel") for name in spec.sizes]
    return coordinate_descent(spec, params_a, params_b, keys, rng, max_passes)


METHODS: dict[str, Callable] = {
    "naive": _naive,
    "wm": _wm,
    "wm_incoming": _wm_incoming,
}


def align(
    method: str,
    params_a: Mapping,
    params_b: Mapping,
    seed: int | list[int] = 0,
    max_passes: int = DEFAULT_MAX_PASSES,
) -> AlignmentResult:
    """Align model B to model A with ``method`` and time it.

    Args:
        method: a key of :data:`METHODS`.
        params_a, params_b: MLP parameter trees of identical shapes.
        seed: seed (or seed sequence) of the random layer order.
        max_passes: pass limit of coordinate descent.
    """
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; available: {sorted(METHODS)}")
    spec = permutation_spec(params_a)
    check_spec(spec, params_b)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    perms, objectives, converged = METHODS[method](spec, params_a, params_b, rng, max_passes)
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


def load_models(checkpoints) -> list[tuple[dict, dict]]:
    """Load checkpoints of one setting, skipping diverged runs with a warning."""
    from lmcpipe.io import load_checkpoint

    models = []
    for path in checkpoints:
        params, meta = load_checkpoint(path)
        if meta.get("status") != "ok":
            log.warning("%s: run status is %r; excluded from pairs", path, meta.get("status"))
            continue
        models.append((params, meta))
    hashes = {meta["spec_hash"] for _, meta in models}
    if len(hashes) > 1:
        raise ValueError(
            f"checkpoints {list(map(str, checkpoints))} come from different settings "
            f"(spec hashes {sorted(hashes)}); pairs need identical settings"
        )
    return sorted(models, key=lambda model: model[1]["seed"])


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
    models, methods, seed: int = 0, max_passes: int = DEFAULT_MAX_PASSES, pairing: str = "all"
):
    """Align pairs of ``models`` with every method; one row per pair, method and layer.

    Pairs are chosen by :func:`seed_pairs` with ``pairing``. Columns: run
    keys, ``seed_a, seed_b, method, layer, permutation`` (``list<int32>``:
    unit of B matched with each unit of A), ``objective``, ``passes``,
    ``converged``, ``seconds``.
    """
    import pyarrow as pa

    from lmcpipe.spec import TrainSpec

    rows = []
    for i, j in seed_pairs(models, pairing):
        (params_a, meta_a), (params_b, meta_b) = models[i], models[j]
        keys = TrainSpec.from_dict(meta_a["spec"]).run_keys()
        for method in methods:
            result = align(method, params_a, params_b, [seed, meta_a["seed"], meta_b["seed"]], max_passes)
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
                })
    schema = pa.schema([
        ("dataset", pa.string()), ("depth", pa.int64()), ("width", pa.int64()),
        ("lr", pa.float64()), ("seed_a", pa.int64()), ("seed_b", pa.int64()),
        ("method", pa.string()), ("layer", pa.int32()),
        ("permutation", pa.list_(pa.int32())), ("objective", pa.float64()),
        ("passes", pa.int32()), ("converged", pa.bool_()), ("seconds", pa.float64()),
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
    checkpoints, methods, out, seed: int = 0, max_passes: int = DEFAULT_MAX_PASSES,
    pairing: str = "all",
) -> None:
    """Align pairs of the given checkpoints and write the alignment table to ``out``."""
    from lmcpipe.io import table_metadata, write_table

    models = load_models(checkpoints)
    table = alignment_table(models, methods, seed, max_passes, pairing)
    hashes = sorted({meta["spec_hash"] for _, meta in models})
    write_table(table, out, table_metadata(",".join(hashes)))
