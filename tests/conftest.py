import jax
import numpy as np
import pytest

from lmcpipe.data import load_dataset
from lmcpipe.models import init_params
from lmcpipe.spec import TrainSpec
from lmcpipe.training import train_seeds


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_spec():
    return TrainSpec("digits", depth=2, width=32, lr=0.05, epochs=8, batch_size=64)


@pytest.fixture(scope="session")
def trained(small_spec, digits):
    """Three trained two-hidden-layer MLPs of one setting."""
    return train_seeds(small_spec, [0, 1, 2], digits)


def random_mlp(seed: int, input_dim=64, depth=3, width=24, n_classes=10):
    """Return a randomly initialised MLP as a tree of NumPy arrays."""
    params = init_params(jax.random.key(seed), input_dim, depth, width, n_classes)
    rng = np.random.default_rng(seed)
    # Non-zero biases, so that tests exercise every permuted axis.
    return {
        layer: {name: np.asarray(value) + (0.1 * rng.normal(size=value.shape) if name == "bias" else 0)
                for name, value in leaves.items()}
        for layer, leaves in params.items()
    }


def count_compilations(function):
    """Call ``function``; return its result and the number of XLA compilations it caused."""
    count = 0

    def listen(event, duration, **kwargs):
        nonlocal count
        if event == "/jax/core/compile/backend_compile_duration":
            count += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        result = function()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return result, count
