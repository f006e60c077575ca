import numpy as np
import pytest

from conftest import random_mlp
from lmcpipe.models import forward
from lmcpipe.permutation import (
    apply_permutations,
    check_spec,
    identity_permutations,
    invert,
    permutation_spec,
    random_permutations,
)


def test_spec_derived_for_any_depth():
    for depth in (1, 2, 4):
        params = random_mlp(0, depth=depth, width=7)
        spec = permutation_spec(params)
        assert list(spec.sizes) == [f"hidden_{i}" for i in range(depth)]
        assert spec.axes[("hidden_0", "kernel")] == (None, "hidden_0")
        assert spec.axes[("output", "kernel")] == (f"hidden_{depth - 1}", None)
        assert spec.axes[("output", "bias")] == (None,)
        touched = spec.touching("hidden_0")
        assert (("hidden_0", "kernel"), 1) in touched
        assert (("hidden_0", "bias"), 0) in touched
        next_layer = "hidden_1" if depth > 1 else "output"
        assert ((next_layer, "kernel"), 0) in touched


def test_permuted_network_computes_same_outputs(trained, digits):
    params = trained[0].params
    spec = permutation_spec(params)
    perms = random_permutations(spec, np.random.default_rng(1))
    permuted = apply_permutations(spec, perms, params)
    assert not np.allclose(permuted["hidden_0"]["kernel"], params["hidden_0"]["kernel"])
    np.testing.assert_allclose(
        np.asarray(forward(permuted, digits.x_test)), np.asarray(forward(params, digits.x_test)),
        rtol=1e-5, atol=1e-5,
    )


def test_inverse_permutation_restores_params():
    params = random_mlp(3)
    spec = permutation_spec(params)
    perms = random_permutations(spec, np.random.default_rng(0))
    permuted = apply_permutations(spec, perms, params)
    restored = apply_permutations(spec, {k: invert(v) for k, v in perms.items()}, permuted)
    for layer in params:
        for name in params[layer]:
            np.testing.assert_array_equal(restored[layer][name], params[layer][name])


def test_spec_mismatch_names_parameter_and_sizes():
    params = random_mlp(0, depth=2, width=6)
    spec = permutation_spec(params)
    params["hidden_1"]["kernel"] = np.zeros((5, 6))
    with pytest.raises(ValueError, match=r"hidden_1/kernel axis 0 has size 5 but permutation hidden_0 has size 6"):
        check_spec(spec, params)


def test_inconsistent_tree_rejected_at_derivation():
    params = random_mlp(0, depth=2, width=6)
    params["hidden_0"]["bias"] = np.zeros(4)
    with pytest.raises(ValueError, match="hidden_0/bias"):
        permutation_spec(params)


def test_invalid_permutation_rejected():
    params = random_mlp(0, depth=1, width=4)
    spec = permutation_spec(params)
    perms = identity_permutations(spec)
    perms["hidden_0"] = np.array([0, 0, 1, 2])
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutations(spec, perms, params)
