import numpy as np
import pyarrow as pa
import pytest

from conftest import random_mlp
from lmcpipe.dimension import dimension_table, distinct_nonzero, participation_ratio, twonn
from lmcpipe.neurons import neuron_table


def subspace_points(k, n=2000, ambient=100, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(ambient, k)))[0]
    return rng.normal(size=(n, k)) @ basis.T


@pytest.mark.parametrize("k", [2, 5, 10])
def test_participation_ratio_of_isotropic_subspace(k):
    assert participation_ratio(subspace_points(k)).dimension == pytest.approx(k, rel=0.05)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_twonn_of_subspace(k):
    assert twonn(subspace_points(k)).dimension == pytest.approx(k, rel=0.2)


def test_twonn_ignores_duplicates_and_zero_rows():
    points = subspace_points(5, n=500)
    with_dead = np.vstack([points, points[:7], np.zeros((4, 100))])
    result = twonn(with_dead)
    assert np.isfinite(result.dimension)
    assert result.n_removed == 11
    assert result.n_points == 500
    assert result.dimension == pytest.approx(twonn(points).dimension)


def test_twonn_too_few_points_gives_reason():
    result = twonn(np.zeros((10, 4)))
    assert np.isnan(result.dimension)
    assert "needs at least 3" in result.reason


def test_participation_ratio_of_zero_points_gives_reason():
    result = participation_ratio(np.zeros((5, 3)))
    assert np.isnan(result.dimension)
    assert result.reason == "all points are zero"


def test_distinct_nonzero_counts_removed():
    points = np.array([[1.0, 0], [1.0, 0], [0, 0], [0, 2.0]])
    kept, removed = distinct_nonzero(points)
    assert kept.shape == (2, 2)
    assert removed == 2


def test_dimension_table_rows():
    table = neuron_table(random_mlp(0, depth=2, width=30),
                         {"dataset": "digits", "depth": 2, "width": 30, "lr": 0.1, "seed": 0})
    dims = dimension_table([table])
    assert dims.num_rows == 4
    assert dims["estimator"].to_pylist() == ["participation_ratio", "twonn"] * 2
    assert dims["layer"].to_pylist() == [0, 0, 1, 1]
    assert all(np.isfinite(dims["dimension"].to_numpy()))
