"""Flax multilayer perceptrons and their loss and accuracy.

An MLP with ``depth`` hidden layers has the parameter tree::

    {"hidden_0": {"kernel": (d_in, w), "bias": (w,)}, ...,
     "hidden_{depth-1}": {...}, "output": {"kernel": (w, n_classes), ...}}

Kernels are ``(inputs, outputs)`` as in ``flax.linen.Dense``. Layers are
stored in forward order; :func:`lmcpipe.layout.layer_names` returns that
order.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from lmcpipe.layout import OUTPUT_LAYER, hidden_name, layer_names



class MLP(nn.Module):
    """ReLU MLP with Flax's default initialisation (LeCun normal kernels, zero biases)."""

    widths: Sequence[int]
    n_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, return_hidden: bool = False):
        hidden = []
        for index, width in enumerate(self.widths):
            x = nn.relu(nn.Dense(width, name=hidden_name(index))(x))
            hidden.append(x)
        logits = nn.Dense(self.n_classes, name=OUTPUT_LAYER)(x)
        if return_hidden:
            return logits, hidden
        return logits


def module_for(params) -> MLP:
    """Return the :class:`MLP` whose parameter tree has the shapes of ``params``."""
    names = layer_names(params)
    widths = tuple(int(params[name]["kernel"].shape[1]) for name in names[:-1])
    return MLP(widths=widths, n_classes=int(params[OUTPUT_LAYER]["kernel"].shape[1]))


def init_params(key: jax.Array, input_dim: int, depth: int, width: int, n_classes: int):
    """Initialise an MLP with ``depth`` hidden layers of ``width`` units."""
    module = MLP(widths=(width,) * depth, n_classes=n_classes)
    variables = module.init(key, jnp.zeros((1, input_dim), jnp.float32))
    return jax.tree_util.tree_map(lambda leaf: leaf, dict(variables["params"]))


def forward(params, x: jax.Array) -> jax.Array:
    """Return the logits of the MLP ``params`` on inputs ``x``."""
    return module_for(params).apply({"params": params}, x)


def hidden_outputs(params, x: jax.Array) -> list[jax.Array]:
    """Return the post-ReLU outputs of every hidden layer on inputs ``x``."""
    _, hidden = module_for(params).apply({"params": params}, x, return_hidden=True)
    return hidden


def loss_and_correct(params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return the per-example cross-entropy and a 0/1 array of correct predictions."""
    logits = forward(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    return loss, correct
