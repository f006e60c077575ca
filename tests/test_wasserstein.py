import numpy as np
import pytest

from conftest import random_mlp
from lmcpipe.permutation import apply_permutations, permutation_spec, random_permutations
from lmcpipe.statistics import activation_moments
from lmcpipe.wasserstein import layer_distances, metric_root, w2_distance


def test_w2_of_permuted_cloud_is_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    distance, assignment = w2_distance(x, x[rng.permutation(40)])
    assert distance == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(np.sort(assignment), np.arange(40))


def test_w2_of_translated_cloud_is_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    shift = np.array([3.0, 0.0, 4.0])
    assert w2_distance(x, x + shift)[0] == pytest.approx(5.0)


def test_w2_unequal_sizes_uses_exact_solver():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 2))
    doubled = np.vstack([x, x])
    assert w2_distance(x, doubled)[0] == pytest.approx(0.0, abs=1e-6)
    distance, assignment = w2_distance(x, rng.normal(size=(35, 2)))
    assert distance > 0
    assert assignment is None


def test_w2_dimension_mismatch_rejected():
    with pytest.raises(ValueError, match="dimension 3 and 4"):
        w2_distance(np.zeros((2, 3)), np.zeros((2, 4)))


def test_metric_root_reproduces_matrix():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 4))
    sigma = a @ a.T
    root = metric_root(sigma)
    np.testing.assert_allclose(root @ root.T, sigma, atol=1e-10)


@pytest.mark.parametrize("metric", ["euclidean", "covariance"])
def test_layer_distances_zero_for_permuted_copy(metric):
    a = random_mlp(0, depth=3, width=12)
    spec = permutation_spec(a)
    b = apply_permutations(spec, random_permutations(spec, np.random.default_rng(1)), a)
    inputs = np.random.default_rng(0).random((200, 64)).astype(np.float32)
    moments = activation_moments(a, inputs)
    distances = layer_distances(a, b, metric, moments.inputs)
    assert len(distances) == 3
    assert max(distances) == pytest.approx(0.0, abs=1e-5)
    other = random_mlp(5, depth=3, width=12)
    assert min(layer_distances(a, other, metric, moments.inputs)) > 0.01


def test_covariance_metric_needs_moments():
    a = random_mlp(0, depth=1, width=4)
    with pytest.raises(ValueError, match="second moments"):
        layer_distances(a, a, "covariance")
