"""Activation statistics of MLPs over a dataset, for alignment and dimension.

All moments are uncentred expectations over the examples: each batch is
summed in float32 by a compiled JAX program, and the batch sums are
accumulated in float64 on the host, so that long sums over a whole training
set keep their precision.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lmcpipe.models import hidden_outputs
from lmcpipe.programs import StoredProgram


@dataclasses.dataclass
class Moments:
    """Moments of one model's layer inputs, and cross moments with a second model.

    Attributes:
        n: number of examples.
        inputs: ``inputs[l] = E[h h^T]`` for the input ``h`` of Dense layer
            ``l``: the raw inputs for ``l = 0``, the post-ReLU output of hidden
            layer ``l - 1`` after that. ``inputs[l + 1]`` is therefore the
            second moment of hidden layer ``l``'s output.
        means: ``means[l] = E[h]`` for the same inputs.
        cross: ``cross[l] = E[a b^T]`` for the post-ReLU outputs ``a`` of
            model A's and ``b`` of model B's hidden layer ``l`` (empty when no
            second model was given).
        means_b: ``E[b]`` of model B's hidden outputs.
        squares_b: ``E[b * b]`` of model B's hidden outputs (elementwise).
    """

    n: int
    inputs: list[np.ndarray]
    means: list[np.ndarray]
    cross: list[np.ndarray] = dataclasses.field(default_factory=list)
    means_b: list[np.ndarray] = dataclasses.field(default_factory=list)
    squares_b: list[np.ndarray] = dataclasses.field(default_factory=list)

    def hidden_covariance(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(cov_ab, var_a, var_b)`` of hidden layer ``layer``'s outputs.

        ``cov_ab[i, j]`` is the covariance of A's unit i and B's unit j.
        """
        mean_a = self.means[layer + 1]
        mean_b = self.means_b[layer]
        cov = self.cross[layer] - np.outer(mean_a, mean_b)
        var_a = np.diag(self.inputs[layer + 1]) - mean_a**2
        var_b = self.squares_b[layer] - mean_b**2
        return cov, np.maximum(var_a, 0.0), np.maximum(var_b, 0.0)


def _batch_sums_function(params_a, params_b, x, mask, with_b):
    weights = mask[:, None]
    hidden_a = hidden_outputs(params_a, x)
    inputs = [x] + hidden_a
    input_sums = [(h * weights).T @ h for h in inputs]
    mean_sums = [jnp.sum(h * weights, axis=0) for h in inputs]
    if not with_b:
        return input_sums, mean_sums, [], [], []
    hidden_b = hidden_outputs(params_b, x)
    cross = [(a * weights).T @ b for a, b in zip(hidden_a, hidden_b)]
    b_sums = [jnp.sum(b * weights, axis=0) for b in hidden_b]
    b_squares = [jnp.sum(b * b * weights, axis=0) for b in hidden_b]
    return input_sums, mean_sums, cross, b_sums, b_squares


_batch_sums = StoredProgram(
    "statistics.batch_sums", jax.jit(_batch_sums_function, static_argnames=("with_b",))
)


def activation_moments(params_a, x: np.ndarray, params_b=None, batch_size: int = 1024) -> Moments:
    """Return the :class:`Moments` of model A (and cross moments with B) over ``x``.

    The last batch is padded with zeros and masked, so every batch has the
    same shape and the program compiles once.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("no examples to compute activation statistics on")
    batch_size = min(batch_size, n)
    with_b = params_b is not None
    totals = None
    for start in range(0, n, batch_size):
        batch = x[start : start + batch_size]
        mask = np.ones(batch_size, np.float32)
        if batch.shape[0] < batch_size:
            mask[batch.shape[0] :] = 0.0
            batch = np.concatenate([batch, np.zeros((batch_size - batch.shape[0],) + batch.shape[1:], batch.dtype)])
        sums = _batch_sums(params_a, params_b if with_b else params_a, batch, mask, with_b=with_b)
        sums = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float64), sums)
        if totals is None:
            totals = sums
        else:
            totals = jax.tree_util.tree_map(np.add, totals, sums)
    inputs, means, cross, means_b, squares_b = jax.tree_util.tree_map(lambda total: total / n, totals)
    return Moments(n, list(inputs), list(means), list(cross), list(means_b), list(squares_b))
