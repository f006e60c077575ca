import dataclasses
import logging

import jax
import numpy as np
import pytest

from conftest import count_compilations
from lmcpipe import training
from lmcpipe.models import init_params
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


def _epoch_program_text(spec, digits, width=8):
    spec = dataclasses.replace(spec, width=width)
    n_train = digits.x_train.shape[0]
    initialise, epoch, _ = training._compile_programs(spec, n_train, digits.input_dim, digits.n_classes, True)
    params, opt_state, order_keys = initialise(np.int64(spec.random_seed), np.arange(2, dtype=np.int32))
    batches = training._order_program(n_train, spec.batch_size)(order_keys, np.int32(1))
    lowered = epoch.lower(params, opt_state, batches, training._hyperparameters(spec),
                          digits.x_train, digits.y_train)
    return lowered.as_text(debug_info=False)


def test_epoch_program_independent_of_scalars(digits):
    first = TrainSpec("digits", 1, 8, 0.05, epochs=2, batch_size=128)
    second = dataclasses.replace(first, lr=0.1, momentum=0.5, warmup_init_lr=1e-4, random_seed=3)
    text = _epoch_program_text(first, digits)
    assert text == _epoch_program_text(second, digits)
    # Control: a change of shape does change the program.
    assert text != _epoch_program_text(first, digits, width=16)


def test_second_lr_reuses_compiled_programs(digits):
    first = TrainSpec("digits", 1, 8, 0.05, epochs=2, batch_size=128)
    second = dataclasses.replace(first, lr=0.2)
    for vectorize in (True, False):
        before = train_seeds(first, [0, 1], digits, vectorize=vectorize)
        results, compilations = count_compilations(
            lambda: train_seeds(second, [0, 1], digits, vectorize=vectorize)
        )
        assert compilations == 0
        assert not np.array_equal(before[0].params["hidden_0"]["kernel"], results[0].params["hidden_0"]["kernel"])
        # A fresh compilation gives the same result, so the shared program did use lr=0.2.
        jax.clear_caches()
        training._cached_programs.cache_clear()
        fresh = train_seeds(second, [0, 1], digits, vectorize=vectorize)
        for cached, recompiled in zip(results, fresh):
            np.testing.assert_array_equal(cached.params["hidden_0"]["kernel"],
                                          recompiled.params["hidden_0"]["kernel"])
            assert cached.history == recompiled.history


def test_initial_parameters_follow_seed_keys(digits):
    spec = TrainSpec("digits", 2, 16, 0.05, epochs=1, batch_size=128, random_seed=7)
    initialise, _, _ = training._compile_programs(
        spec, digits.x_train.shape[0], digits.input_dim, digits.n_classes, True
    )
    params, _, order_keys = initialise(np.int64(spec.random_seed), np.array([0, 4], np.int32))
    for position, seed in enumerate([0, 4]):
        init_key, order_key = seed_keys(spec, seed)
        expected = init_params(init_key, digits.input_dim, spec.depth, spec.width, digits.n_classes)
        for layer in expected:
            for name in expected[layer]:
                np.testing.assert_array_equal(params[layer][name][position], expected[layer][name])
        np.testing.assert_array_equal(jax.random.key_data(order_keys[position]),
                                      jax.random.key_data(order_key))


@pytest.mark.parametrize("use_vmap", [True, False])
@pytest.mark.parametrize("depth, width, input_dim", [(1, 16, 64), (2, 100, 64), (3, 512, 784)])
def test_cpu_options_keep_training_bits(depth, width, input_dim, use_vmap):
    # On the CPU the training programs compile with options of their own
    # (training.PROGRAM_OPTIONS); each must give exactly what XLA's defaults give.
    n_train, batch_size = 256, 32
    spec = TrainSpec("random", depth, width, 0.05, epochs=6, batch_size=batch_size)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_train, input_dim)).astype(np.float32)
    y = rng.integers(0, 10, n_train).astype(np.int32)
    initialise, epoch, evaluate = training._compile_programs(spec, n_train, input_dim, 10, use_vmap)
    order = jax.jit(training._make_order(n_train, batch_size))
    hyperparameters = training._hyperparameters(spec)
    seeds = np.arange(3, dtype=np.int32)

    def run(options):
        def compiled(name, program, *args):
            return program.lower(*args).compile(options[name] or None)

        init_args = (np.int64(5), seeds)
        params, opt_state, keys = compiled("initialise", initialise, *init_args)(*init_args)
        order_program = compiled("order", order, keys, np.int32(1))
        position = () if use_vmap else (np.int32(1),)
        epoch_program = evaluate_program = None
        history = []
        # Rounding differences can take a few epochs to reach the stored bits.
        for index in range(1, 7):
            batches = order_program(keys, np.int32(index))
            epoch_args = (params, opt_state, batches, *position, hyperparameters, x, y)
            epoch_program = epoch_program or compiled("epoch", epoch, *epoch_args)
            params, opt_state = epoch_program(*epoch_args)
            evaluate_program = evaluate_program or compiled("evaluate", evaluate, params, x, y, x, y)
            history.append(evaluate_program(params, x, y, x, y))
        leaves = jax.tree_util.tree_leaves((params, opt_state, batches, history))
        return [np.asarray(leaf) for leaf in leaves] + [np.asarray(jax.random.key_data(keys))]

    default = run({name: None for name in training.PROGRAM_OPTIONS})
    chosen = run(training.PROGRAM_OPTIONS)
    assert len(default) == len(chosen)
    for a, b in zip(default, chosen):
        np.testing.assert_array_equal(a, b)


def test_sgd_step_flops_of_reference_model():
    spec = TrainSpec("random", 3, 512, 0.01, epochs=1, batch_size=500)
    # 6 * 500 * (784*512 + 2*512*512 + 512*10) - 2 * 500 * 784*512
    assert training.sgd_step_flops(spec, 784, 10) == 2_391_040_000


@pytest.mark.parametrize(
    ("vectorize", "width", "n_seeds", "backend", "expected"),
    [
        (True, 8, 3, "cpu", True),
        (False, 8, 3, "gpu", False),
        (True, 8, 1, "gpu", False),
        ("auto", 8, 3, "gpu", True),
        ("auto", 4096, 3, "gpu", True),
        ("auto", 8, 3, "tpu", True),
        ("auto", 8, 3, "cpu", True),
        ("auto", 4096, 3, "cpu", False),
    ],
)
def test_resolve_vectorize(vectorize, width, n_seeds, backend, expected):
    spec = TrainSpec("random", 3, width, 0.01, epochs=1, batch_size=500)
    assert training.resolve_vectorize(vectorize, spec, 784, 10, n_seeds, backend) is expected


def test_resolve_vectorize_cpu_threshold(caplog):
    below = TrainSpec("digits", 1, 512, 0.1, epochs=40, batch_size=64)
    above = TrainSpec("random", 3, 512, 0.01, epochs=1, batch_size=500)
    assert training.sgd_step_flops(below, 64, 10) < training.CPU_VMAP_MAX_STEP_FLOPS
    assert training.sgd_step_flops(above, 784, 10) >= training.CPU_VMAP_MAX_STEP_FLOPS
    with caplog.at_level(logging.INFO, logger="lmcpipe.training"):
        assert training.resolve_vectorize("auto", below, 64, 10, 3, "cpu") is True
        assert training.resolve_vectorize("auto", above, 784, 10, 4, "cpu") is False
    assert "execution path: vmap, because one seed's SGD step costs" in caplog.text
    assert "execution path: loop, because one seed's SGD step costs" in caplog.text


def test_resolve_vectorize_rejects_unknown_value():
    spec = TrainSpec("digits", 1, 8, 0.1, epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="vectorize must be 'auto', True or False"):
        training.resolve_vectorize("vmap", spec, 64, 10, 3)
