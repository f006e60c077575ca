import numpy as np
import pytest

from conftest import random_mlp
from lmcpipe.dimension import (
    ESTIMATORS,
    DimensionOptions,
    dimension_table,
    distinct_nonzero,
    estimate,
    mle,
    model_estimates,
    participation_ratio,
    pca_dimension,
    spectral_estimate,
    twonn,
)


def subspace_points(k, n=2000, ambient=100, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(ambient, k)))[0]
    return rng.normal(size=(n, k)) @ basis.T


def meta_for(seed, width=12, depth=1, status="ok"):
    spec = {"dataset": "digits", "depth": depth, "width": width, "lr": 0.1, "epochs": 1, "batch_size": 8}
    return {"spec": spec, "seed": seed, "status": status, "spec_hash": "0" * 16}


def tiny_model():
    """Return a one-hidden-layer model with identity kernel and inputs with E[x x^T] = diag(4, 1)."""
    params = {
        "hidden_0": {"kernel": np.eye(2, dtype=np.float32), "bias": np.zeros(2, np.float32)},
        "output": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)},
    }
    x = np.array([[2.0, 1.0], [-2.0, 1.0], [2.0, -1.0], [-2.0, -1.0]], np.float32)
    return params, x


def by_key(results):
    return {(layer, geometry, result.estimator): result for layer, geometry, result in results}


@pytest.mark.parametrize("k", [2, 5, 10])
def test_participation_ratio_of_isotropic_subspace(k):
    assert participation_ratio(subspace_points(k)).dimension == pytest.approx(k, rel=0.05)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_twonn_of_subspace(k):
    assert twonn(subspace_points(k)).dimension == pytest.approx(k, rel=0.2)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_mle_of_subspace(k):
    assert mle(subspace_points(k)).dimension == pytest.approx(k, rel=0.2)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_pca_of_isotropic_subspace(k):
    points = subspace_points(k)
    assert pca_dimension(points, "pca_99").dimension == k
    assert pca_dimension(points, "pca_95").dimension <= k
    assert pca_dimension(points, "pca_90").dimension >= np.floor(0.9 * k) - 1


def test_pca_levels_of_known_spectrum():
    eigenvalues = np.array([0.6, 0.3, 0.1])
    assert spectral_estimate("pca_90", eigenvalues, 3).dimension == 2
    assert spectral_estimate("pca_95", eigenvalues, 3).dimension == 3
    assert spectral_estimate("pca_99", eigenvalues, 3).dimension == 3


def test_pca_level_reached_exactly_stops_there():
    eigenvalues = np.array([0.9, 0.1])
    assert spectral_estimate("pca_90", eigenvalues, 2).dimension == 1


def test_participation_ratio_of_known_spectrum():
    result = spectral_estimate("participation_ratio", np.array([3.0, 1.0]), 5)
    assert result.dimension == pytest.approx(16 / 10)
    assert result.n_points == 5


@pytest.mark.parametrize("name", ESTIMATORS)
def test_duplicated_point_gives_finite_estimate(name):
    points = subspace_points(3, n=60)
    with_duplicate = np.vstack([points, points[:1]])
    result = estimate(name, with_duplicate)
    assert np.isfinite(result.dimension)
    assert result.reason == ""


@pytest.mark.parametrize("name", ["twonn", "mle"])
def test_neighbour_estimators_ignore_duplicates_and_zeros(name):
    points = subspace_points(5, n=500)
    with_dead = np.vstack([points, points[:7], np.zeros((4, 100))])
    result = estimate(name, with_dead)
    assert np.isfinite(result.dimension)
    assert result.n_removed == 11
    assert result.n_points == 500
    assert result.dimension == pytest.approx(estimate(name, points).dimension)


@pytest.mark.parametrize(("name", "needed"), [("twonn", "at least 3"), ("mle", "at least 4")])
def test_too_few_points_gives_reason(name, needed):
    result = estimate(name, np.vstack([np.zeros((10, 4)), np.eye(4)[:2]]))
    assert np.isnan(result.dimension)
    assert needed in result.reason


def test_participation_ratio_of_zero_points_gives_reason():
    result = participation_ratio(np.zeros((5, 3)))
    assert np.isnan(result.dimension)
    assert result.reason == "all points are zero"


def test_distinct_nonzero_counts_removed():
    points = np.array([[1.0, 0], [1.0, 0], [0, 0], [0, 2.0], [1e-20, 0]])
    kept, removed = distinct_nonzero(points)
    assert kept.shape == (2, 2)
    assert removed == 3


def test_unknown_estimator_rejected():
    with pytest.raises(ValueError, match="unknown dimension estimator"):
        estimate("box_counting", np.eye(3))


def test_options_reject_single_subsample():
    with pytest.raises(ValueError, match="at least 2"):
        DimensionOptions(subsamples=1)


def test_covariance_geometry_hand_computed():
    params, x = tiny_model()
    options = DimensionOptions(estimators=("participation_ratio", "pca_90"), subsamples=0)
    results = by_key(model_estimates(params, x, 0, options))
    # Points sqrt(Sigma) w_i are (2, 0) and (0, 1): eigenvalues 4 and 1.
    assert results[(0, "covariance", "participation_ratio")].dimension == pytest.approx(25 / 17)
    assert results[(0, "covariance", "pca_90")].dimension == 2
    # The incoming vectors are the identity: eigenvalues 1 and 1.
    assert results[(0, "incoming", "participation_ratio")].dimension == pytest.approx(2.0)


def test_activation_geometry_hand_computed():
    params, x = tiny_model()
    options = DimensionOptions(estimators=("participation_ratio", "twonn"), subsamples=0)
    results = by_key(model_estimates(params, x, 0, options))
    # ReLU outputs (2, 1), (0, 1), (2, 0), (0, 0): E[a a^T] = [[2, 0.5], [0.5, 0.5]],
    # trace 2.5 and trace of the square 4.75.
    result = results[(0, "activations", "participation_ratio")]
    assert result.dimension == pytest.approx(2.5**2 / 4.75)
    assert result.n_points == 4
    assert (0, "activations", "twonn") not in results


def test_spread_is_reproducible_and_positive():
    params = random_mlp(0, input_dim=16, depth=1, width=40)
    x = np.random.default_rng(1).uniform(size=(200, 16)).astype(np.float32)
    options = DimensionOptions(estimators=("participation_ratio", "twonn"), subsamples=4, seed=3)
    first = model_estimates(params, x, 0, options)
    second = model_estimates(params, x, 0, options)
    assert [result.spread for _, _, result in first] == [result.spread for _, _, result in second]
    assert all(result.spread > 0 for _, _, result in first)
    other_seed = model_estimates(params, x, 0, DimensionOptions(
        estimators=("participation_ratio", "twonn"), subsamples=4, seed=4))
    assert [result.spread for _, _, result in first] != [result.spread for _, _, result in other_seed]


def test_no_subsamples_leave_spread_nan():
    params = random_mlp(0, input_dim=16, depth=1, width=20)
    x = np.random.default_rng(1).uniform(size=(50, 16)).astype(np.float32)
    results = model_estimates(params, x, 0, DimensionOptions(estimators=("participation_ratio",), subsamples=0))
    assert all(np.isnan(result.spread) for _, _, result in results)


def test_dimension_table_rows(digits):
    models = [(random_mlp(seed, depth=2, width=30), meta_for(seed, width=30, depth=2)) for seed in (0, 1)]
    options = DimensionOptions(subsamples=2)
    table = dimension_table(models, digits, options).to_pandas()
    # Per model and layer: 6 estimators in each point geometry, 4 for activations.
    assert len(table) == 2 * 2 * (6 + 6 + 4)
    assert set(table.geometry) == {"incoming", "covariance", "activations"}
    assert set(table[table.geometry == "activations"].estimator) == {
        "participation_ratio", "pca_90", "pca_95", "pca_99"}
    assert table.dimension.notna().all()
    assert table.spread.notna().all()
    assert (table.reason == "").all()
    activations = table[table.geometry == "activations"]
    assert (activations.n_points == len(digits.x_train)).all()


def test_diverged_model_gets_reason(digits):
    params = random_mlp(0, depth=1, width=10)
    table = dimension_table([(params, meta_for(0, width=10, status="diverged"))], digits,
                            DimensionOptions(subsamples=0)).to_pandas()
    assert len(table) == 16
    assert table.dimension.isna().all()
    assert (table.reason == "run status is 'diverged'").all()
