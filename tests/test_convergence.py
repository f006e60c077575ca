import numpy as np
import pytest

from conftest import random_mlp
from lmcpipe.convergence import (
    ConvergenceOptions,
    convergence_tables,
    draw_weights,
    fit_slope,
    predicted_slope,
    source_names,
    synthetic_samples,
    trained_samples,
)


def meta_for(seed, width, lr=0.1):
    spec = {"dataset": "digits", "depth": 1, "width": width, "lr": lr, "epochs": 1, "batch_size": 8}
    return {"spec": spec, "seed": seed, "status": "ok", "spec_hash": "0" * 16}


def test_fit_recovers_known_slope():
    rng = np.random.default_rng(0)
    widths = np.repeat([8, 16, 32, 64, 128, 256], 4)
    distances = 3.0 * widths**-0.4 * np.exp(rng.normal(scale=0.05, size=len(widths)))
    fit = fit_slope(widths, distances)
    assert fit["reason"] == ""
    assert fit["slope"] == pytest.approx(-0.4, abs=0.03)
    assert fit["slope_low"] < -0.4 < fit["slope_high"]
    assert fit["intercept"] == pytest.approx(np.log(3.0), abs=0.1)
    assert fit["n"] == 24
    assert fit["n_widths"] == 6


def test_fit_of_exact_power_law_has_zero_error():
    widths = np.array([4, 8, 16, 32])
    fit = fit_slope(widths, widths**-0.25)
    assert fit["slope"] == pytest.approx(-0.25)
    assert fit["stderr"] == pytest.approx(0.0, abs=1e-12)


def test_interval_widens_with_confidence():
    rng = np.random.default_rng(1)
    widths = np.repeat([8, 16, 32, 64], 3)
    distances = widths**-0.5 * np.exp(rng.normal(scale=0.1, size=len(widths)))
    narrow = fit_slope(widths, distances, confidence=0.8)
    wide = fit_slope(widths, distances, confidence=0.99)
    assert wide["slope_high"] - wide["slope_low"] > narrow["slope_high"] - narrow["slope_low"]


def test_fit_with_one_width_gives_reason():
    fit = fit_slope(np.array([8, 8, 8]), np.array([0.5, 0.6, 0.7]))
    assert np.isnan(fit["slope"])
    assert "at least 3 values at 2 widths" in fit["reason"]


def test_predicted_slope():
    assert predicted_slope(64) == pytest.approx(-1 / 64)
    assert predicted_slope(4) == pytest.approx(-0.25)
    assert predicted_slope(1) == pytest.approx(-0.5)
    assert np.isnan(predicted_slope(float("nan")))


def test_subspace_weights_lie_in_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(10, 3)))[0]
    weights = draw_weights("subspace3", 50, 10, rng, basis)
    assert weights.shape == (50, 10)
    assert np.linalg.matrix_rank(weights) == 3


def test_source_names_skip_full_dimension():
    options = ConvergenceOptions(sources=("gaussian", "subspace"), subspace_dimensions=(2, 10))
    assert source_names(options, 10) == ["gaussian", "subspace2"]


def test_synthetic_slope_follows_support_dimension():
    options = ConvergenceOptions(widths=(16, 32, 64, 128, 256), repeats=3, sources=("subspace",),
                                 subspace_dimensions=(3, 8))
    samples = synthetic_samples(20, options)
    slopes = {}
    for source in ("subspace3", "subspace8"):
        rows = [row for row in samples if row["source"] == source]
        slopes[source] = fit_slope([row["width"] for row in rows], [row["w2"] for row in rows])["slope"]
    assert slopes["subspace3"] < slopes["subspace8"] < 0
    assert slopes["subspace3"] == pytest.approx(-1 / 3, abs=0.1)


def test_synthetic_samples_reproducible_per_width():
    small = ConvergenceOptions(widths=(8, 16), repeats=2, sources=("gaussian",))
    large = ConvergenceOptions(widths=(8, 16, 32), repeats=2, sources=("gaussian",))
    first = [row["w2"] for row in synthetic_samples(5, small)]
    second = [row["w2"] for row in synthetic_samples(5, large) if row["width"] < 32]
    assert first == second


def test_trained_samples_pair_models_of_a_setting():
    models = [(random_mlp(seed, depth=1, width=width), meta_for(seed, width))
              for width in (8, 16) for seed in range(3)]
    rows = trained_samples(models, {8, 16, 32})
    assert len(rows) == 2 * 3
    assert {(row["seed_a"], row["seed_b"]) for row in rows} == {(0, 1), (0, 2), (1, 2)}
    assert all(row["w2"] > 0 for row in rows)
    assert len(trained_samples(models, {16})) == 3


def test_convergence_tables_with_trained_models():
    models = [(random_mlp(seed, depth=1, width=width), meta_for(seed, width))
              for width in (8, 16) for seed in range(3)]
    options = ConvergenceOptions(widths=(8, 16), repeats=2, sources=("gaussian",))
    samples, fits = convergence_tables(64, options, models)
    fits = fits.to_pandas().set_index("source")
    assert set(samples["source"].to_pylist()) == {"gaussian", "trained"}
    assert fits.loc["gaussian", "dimension"] == 64
    assert fits.loc["gaussian", "dimension_kind"] == "known"
    assert fits.loc["trained", "lr"] == pytest.approx(0.1)
    assert fits.loc["trained", "dimension_kind"] == "twonn"
    assert fits.loc["trained", "predicted_slope"] == pytest.approx(-1 / fits.loc["trained", "dimension"])
    assert fits.loc["trained", "reason"] == ""


def test_convergence_rejects_wrong_input_dimension():
    models = [(random_mlp(0, input_dim=8, depth=1, width=8), meta_for(0, 8))]
    with pytest.raises(ValueError, match="input dimension 8, expected 64"):
        convergence_tables(64, ConvergenceOptions(widths=(8, 16), repeats=1), models)
