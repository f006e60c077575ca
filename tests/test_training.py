import jax
import numpy as np
import pytest

from lmcpipe.spec import TrainSpec
from lmcpipe.training import STATUS_DIVERGED, STATUS_OK, seed_keys, train_seeds


def test_training_lowers_test_loss(trained):
    for result in trained:
        assert result.status == STATUS_OK
        history = result.history
        assert history["epoch"] == list(range(9))
        assert history["test_loss"][-1] < history["test_loss"][0] / 2
        assert history["test_accuracy"][-1] > 0.85


def test_seeds_differ_in_init_and_data_order(small_spec):
    init_0, order_0 = seed_keys(small_spec, 0)
    init_1, order_1 = seed_keys(small_spec, 1)
    assert not np.array_equal(jax.random.key_data(init_0), jax.random.key_data(init_1))
    assert not np.array_equal(jax.random.key_data(order_0), jax.random.key_data(order_1))
    assert not np.array_equal(jax.random.key_data(init_0), jax.random.key_data(order_0))


def test_trained_seeds_differ(trained):
    assert not np.allclose(trained[0].params["hidden_0"]["kernel"], trained[1].params["hidden_0"]["kernel"])


def test_training_is_deterministic(small_spec, digits, trained):
    again = train_seeds(small_spec, [1], digits, vectorize=False)[0]
    reference = trained[1]
    for layer in reference.params:
        for name in reference.params[layer]:
            np.testing.assert_allclose(again.params[layer][name], reference.params[layer][name],
                                       rtol=1e-5, atol=1e-6)


def test_vmap_and_loop_paths_agree(digits):
    spec = TrainSpec("digits", 1, 16, 0.05, epochs=2, batch_size=128)
    looped = train_seeds(spec, [0, 1], digits, vectorize=False)
    mapped = train_seeds(spec, [0, 1], digits, vectorize=True)
    for a, b in zip(looped, mapped):
        np.testing.assert_allclose(a.params["hidden_0"]["kernel"], b.params["hidden_0"]["kernel"],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.history["test_loss"], b.history["test_loss"], rtol=1e-4)


def test_divergence_is_detected(digits):
    spec = TrainSpec("digits", 1, 16, 1e30, epochs=3, batch_size=64, warmup_steps=0)
    result = train_seeds(spec, [0], digits, vectorize=False)[0]
    assert result.status == STATUS_DIVERGED
    assert not np.isfinite(result.history["train_loss"][-1])


def test_batch_larger_than_data_rejected(digits):
    spec = TrainSpec("digits", 1, 16, 0.1, epochs=1, batch_size=5000)
    with pytest.raises(ValueError, match="exceeds the 1437 training examples"):
        train_seeds(spec, [0], digits)
