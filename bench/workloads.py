"""Models, data and FLOP counts shared by the benchmarks.

The reference model is a 784-512-512-512-10 ReLU MLP (MNIST-sized inputs,
three hidden layers of 512 units, 10 classes) with Flax's default
initialisation, trained at batch size 500. Inputs are uniform random numbers
in [0, 1) and labels uniform random classes, so the benchmarks need no
dataset download. The timings depend on the shapes only, but losses and
alignment objectives on random data do not describe trained networks.
"""

from __future__ import annotations

import jax
import numpy as np

from lmcpipe.data import Dataset
from lmcpipe.models import init_params

INPUT_DIM = 784
N_CLASSES = 10
DEPTH = 3
WIDTH = 512
BATCH = 500


def mlp(seed: int, width: int = WIDTH, depth: int = DEPTH):
    """Return a freshly initialised MLP of ``depth`` hidden layers of ``width`` units."""
    return init_params(jax.random.key(seed), INPUT_DIM, depth, width, N_CLASSES)


def model_name(width: int = WIDTH, depth: int = DEPTH) -> str:
    """Return the layer sizes of an MLP joined by dashes, such as ``784-512-512-512-10``."""
    return "-".join(str(size) for size in [INPUT_DIM] + [width] * depth + [N_CLASSES])


def random_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` uniform random inputs in [0, 1) (float32) and random labels (int32)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, INPUT_DIM), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, n, dtype=np.int32)
    return x, y


def random_dataset(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """Return a :class:`~lmcpipe.data.Dataset` of random inputs and labels."""
    x_train, y_train = random_inputs(n_train, seed)
    x_test, y_test = random_inputs(n_test, seed + 1)
    return Dataset("random", x_train, y_train, x_test, y_test, N_CLASSES)


def layer_shapes(width: int = WIDTH, depth: int = DEPTH) -> list[tuple[int, int]]:
    """Return ``(fan_in, fan_out)`` of every Dense layer, input layer first."""
    sizes = [INPUT_DIM] + [width] * depth + [N_CLASSES]
    return list(zip(sizes[:-1], sizes[1:]))


def forward_flops(batch: int, shapes: list[tuple[int, int]]) -> int:
    """Return the matmul FLOPs of a forward pass: 2 * batch * sum of fan_in * fan_out."""
    return 2 * batch * sum(fan_in * fan_out for fan_in, fan_out in shapes)


def step_flops(batch: int, shapes: list[tuple[int, int]]) -> int:
    """Return the matmul FLOPs of one SGD step (forward and backward pass).

    The backward pass computes every kernel gradient (2 * batch * fan_in *
    fan_out each) and the gradient of every layer's input except the first
    layer's, which training never needs, so the step costs
    ``6 * B * sum(in * out) - 2 * B * in_1 * out_1``. Bias, activation,
    loss and optimizer FLOPs grow with the layer widths only, not with their
    product, and are left out.
    """
    first_in, first_out = shapes[0]
    return 3 * forward_flops(batch, shapes) - 2 * batch * first_in * first_out
