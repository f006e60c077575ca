"""Loss and accuracy along the straight line between two aligned networks.

For t in a grid on [0, 1], :math:`\\theta(t) = (1 - t)\\,\\theta_A + t\\,\\theta_{B'}`
with B' model B after alignment. From each curve:

* loss barrier (Frankle et al., 2020; Entezari et al., 2022):
  :math:`\\max_t [L(\\theta(t)) - ((1 - t) L(\\theta_A) + t L(\\theta_{B'}))]`;
* accuracy barrier, the same form for the drop in accuracy:
  :math:`\\max_t [((1 - t) A(\\theta_A) + t A(\\theta_{B'})) - A(\\theta(t))]`;
* midpoint: the raw value at t = 0.5 (for the test loss, the "LMC error"
  plotted by Ferbach et al., 2024), with no endpoint subtracted.

Barriers are at least 0 because t = 0 is on the grid. The whole curve is
kept so that other definitions can be derived from it.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from lmcpipe.models import loss_and_correct
from lmcpipe.programs import StoredProgram

METRICS = ("loss", "accuracy")


def t_grid(points: int) -> np.ndarray:
    """Return ``points`` evenly spaced values of t in [0, 1], ends included.

    ``points`` must be odd so that the midpoint t = 0.5 lies on the grid.
    """
    if points < 3 or points % 2 == 0:
        raise ValueError(f"interpolation points must be an odd integer >= 3, got {points}")
    return np.linspace(0.0, 1.0, points)


def _curve_sums_function(totals, params_a, params_b, ts, x, y, mask):
    """Add one chunk's summed loss and correct predictions, for every t at once, to ``totals``."""

    def at_t(t):
        params = jax.tree_util.tree_map(lambda a, b: (1 - t) * a + t * b, params_a, params_b)
        loss, correct = loss_and_correct(params, x, y)
        return jnp.sum(loss * mask), jnp.sum(correct * mask)

    loss, correct = jax.vmap(at_t)(ts)
    return totals + jnp.stack([loss, correct])


# One program per chunk shape, not per dataset size: both splits of a study
# share it when they use the same chunk (see barrier_tables).
_curve_sums = StoredProgram("barriers.curve_sums", jax.jit(_curve_sums_function, donate_argnums=0))

# Examples per call of the curve program.
CHUNK = 2048


def interpolation_curve(
    params_a, params_b, x: np.ndarray, y: np.ndarray, ts: np.ndarray, chunk: int = CHUNK
) -> dict[str, np.ndarray]:
    """Return mean loss and accuracy of :math:`\\theta(t)` on ``(x, y)`` for every t.

    All values of t are evaluated in one compiled program, over examples in
    chunks of ``chunk`` (the last one padded and masked), so memory grows
    with ``len(ts) * chunk`` and not with the dataset. The program is
    compiled once for each chunk size, number of t values and model shape,
    whatever the number of examples.
    """
    n = x.shape[0]
    chunk = min(chunk, n)
    padded = -(-n // chunk) * chunk
    mask = np.zeros(padded, np.float32)
    mask[:n] = 1.0
    x = np.concatenate([x, np.zeros((padded - n,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(padded - n, y.dtype)])
    ts = np.asarray(ts, np.float32)
    # On the device from the start, like the totals that each call returns,
    # so that every call has the same argument types.
    totals = jax.device_put(np.zeros((2, len(ts)), np.float32))
    for start in range(0, padded, chunk):
        part = slice(start, start + chunk)
        totals = _curve_sums(totals, params_a, params_b, ts, x[part], y[part], mask[part])
    loss, correct = np.asarray(totals, np.float64)
    return {"loss": loss / n, "accuracy": correct / n}


def barrier(ts: np.ndarray, values: np.ndarray, metric: str) -> float:
    """Return the barrier of a curve: the largest excess loss or accuracy drop over the chord."""
    chord = (1 - ts) * values[0] + ts * values[-1]
    if metric == "loss":
        return float(np.max(values - chord))
    if metric == "accuracy":
        return float(np.max(chord - values))
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def midpoint(ts: np.ndarray, values: np.ndarray) -> float:
    """Return the curve's value at t = 0.5, which must be on the grid."""
    hits = np.flatnonzero(np.isclose(ts, 0.5, rtol=0, atol=1e-12))
    if hits.size != 1:
        raise ValueError("t = 0.5 is not on the interpolation grid")
    return float(values[hits[0]])


SPLITS = ("train", "test")


def table_schemas():
    """Return the pyarrow schemas of the ``curves`` and ``barriers`` tables."""
    import pyarrow as pa

    from lmcpipe.spec import run_key_fields

    pair = run_key_fields() + [
        ("seed_a", pa.int64()), ("seed_b", pa.int64()), ("method", pa.string()),
        ("split", pa.string()), ("metric", pa.string()),
    ]
    curves = pa.schema(pair + [("t", pa.float64()), ("value", pa.float64())])
    barriers = pa.schema(pair + [
        ("barrier", pa.float64()), ("midpoint", pa.float64()),
        ("endpoint_a", pa.float64()), ("endpoint_b", pa.float64()),
        ("n_diverged", pa.int64()),
    ])
    return curves, barriers


def evaluation_splits(dataset, train_examples: int | None = None, seed: int = 0) -> dict:
    """Return ``{"train": (x, y), "test": (x, y)}`` for the curves.

    With ``train_examples``, the train curve uses that many training examples
    drawn without replacement by ``seed``, the same for every pair and
    method. The test set is always used whole.
    """
    x_train, y_train = dataset.split("train")
    if train_examples is not None and train_examples < len(y_train):
        chosen = np.sort(np.random.default_rng(seed).choice(len(y_train), train_examples, replace=False))
        x_train, y_train = x_train[chosen], y_train[chosen]
    return {"train": (x_train, y_train), "test": dataset.split("test")}


def barrier_tables(models, alignment, points: int = 25, n_diverged: int = 0,
                   train_examples: int | None = None):
    """Evaluate every pair and method of an alignment table along the line.

    Args:
        models: ``(params, meta)`` of one setting, as from
            :func:`lmcpipe.alignment.load_models`.
        alignment: alignment table of those models.
        points: odd number of t values.
        n_diverged: runs of the setting left out because they diverged,
            recorded in every barrier row.
        train_examples: evaluate the train split on this many training
            examples (see :func:`evaluation_splits`); all when ``None``.

    Returns:
        ``(curves, barriers)`` tables. ``curves`` has the run keys, ``seed_a,
        seed_b, method, split, metric, t, value``; ``barriers`` has one row
        per pair, method, split and metric with ``barrier``, ``midpoint``,
        ``endpoint_a``, ``endpoint_b`` and ``n_diverged``.
    """
    import pyarrow as pa

    from lmcpipe.alignment import permutations_of
    from lmcpipe.data import load_for_spec
    from lmcpipe.permutation import apply_permutations, permutation_spec
    from lmcpipe.spec import TrainSpec

    curves_schema, barriers_schema = table_schemas()
    ts = t_grid(points)
    if len(models) < 2:
        return curves_schema.empty_table(), barriers_schema.empty_table()
    by_seed = {meta["seed"]: params for params, meta in models}
    spec = TrainSpec.from_dict(models[0][1]["spec"])
    dataset = load_for_spec(spec)
    keys = spec.run_keys()
    splits = evaluation_splits(dataset, train_examples)
    # The test set's chunk for both splits, so that they share one compiled
    # program (unless the train subset is smaller) and the test curve does not
    # depend on barriers.train_examples.
    chunk = min(CHUNK, len(splits["test"][1]))
    permutation_structure = permutation_spec(models[0][0])
    names = list(permutation_structure.sizes)
    pairs = sorted({(row["seed_a"], row["seed_b"], row["method"]) for row in
                    alignment.select(["seed_a", "seed_b", "method"]).to_pylist()})
    curve_rows: dict[str, list] = {name: [] for name in
                                   ["seed_a", "seed_b", "method", "split", "metric", "t", "value"]}
    barrier_rows = []
    for seed_a, seed_b, method in pairs:
        if seed_a not in by_seed or seed_b not in by_seed:
            raise ValueError(f"alignment lists seeds {seed_a}-{seed_b}, but no such checkpoints were given")
        perms = permutations_of(alignment, seed_a, seed_b, method, names)
        params_b = apply_permutations(permutation_structure, perms, by_seed[seed_b])
        for split in SPLITS:
            x, y = splits[split]
            curve = interpolation_curve(by_seed[seed_a], params_b, x, y, ts, chunk)
            for metric in METRICS:
                values = curve[metric]
                curve_rows["seed_a"] += [seed_a] * len(ts)
                curve_rows["seed_b"] += [seed_b] * len(ts)
                curve_rows["method"] += [method] * len(ts)
                curve_rows["split"] += [split] * len(ts)
                curve_rows["metric"] += [metric] * len(ts)
                curve_rows["t"] += ts.tolist()
                curve_rows["value"] += values.tolist()
                barrier_rows.append({
                    **keys, "seed_a": seed_a, "seed_b": seed_b, "method": method,
                    "split": split, "metric": metric,
                    "barrier": barrier(ts, values, metric),
                    "midpoint": midpoint(ts, values),
                    "endpoint_a": float(values[0]), "endpoint_b": float(values[-1]),
                    "n_diverged": n_diverged,
                })
    n = len(curve_rows["t"])
    curves = pa.table({**{key: [value] * n for key, value in keys.items()}, **curve_rows},
                      schema=curves_schema)
    return curves, pa.Table.from_pylist(barrier_rows, schema=barriers_schema)


def barriers_to_files(
    checkpoints, alignment_path, curves_out, barriers_out, points: int = 25,
    train_examples: int | None = None,
) -> None:
    """Compute curves and barriers for the pairs of an alignment table on disk."""
    from lmcpipe.alignment import load_models
    from lmcpipe.io import read_table, table_metadata, write_table

    models, n_diverged = load_models(checkpoints)
    curves, barriers = barrier_tables(
        models, read_table(alignment_path), points, n_diverged, train_examples
    )
    hashes = ",".join(sorted({meta["spec_hash"] for _, meta in models}))
    subset = "all" if train_examples is None else str(train_examples)
    write_table(curves, curves_out, table_metadata(hashes, train_examples=subset))
    write_table(barriers, barriers_out, table_metadata(hashes, train_examples=subset))
