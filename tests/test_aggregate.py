import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lmcpipe.aggregate import (
    CORRELATION_COLUMNS,
    bootstrap_spearman,
    correlate,
    correlation_arrow,
    correlation_table,
    pair_dimensions,
)


def make_tables(n_seeds=4, constant=False):
    rng = np.random.default_rng(0)
    keys = {"dataset": "digits", "depth": 1, "lr": 0.1}
    dims, barriers = [], []
    for width in (16, 32, 64):
        for seed in range(n_seeds):
            value = 5.0 if constant else width / 4 + rng.normal()
            dims.append({**keys, "width": width, "seed": seed, "layer": 0, "geometry": "incoming",
                         "estimator": "participation_ratio", "dimension": value})
        for a in range(n_seeds):
            for b in range(a + 1, n_seeds):
                barriers.append({**keys, "width": width, "seed_a": a, "seed_b": b, "method": "wm",
                                 "split": "test", "metric": "loss",
                                 "barrier": 1.0 / width + 0.001 * rng.normal(), "midpoint": 0.3})
    return pd.DataFrame(barriers), pd.DataFrame(dims)


def test_pair_dimension_is_mean_of_pair():
    barriers, dims = make_tables()
    joined = pair_dimensions(barriers, dims)
    row = joined.iloc[0]
    lookup = dims.set_index(["width", "seed"])["dimension"]
    expected = (lookup[(row.width, row.seed_a)] + lookup[(row.width, row.seed_b)]) / 2
    assert row.dimension == pytest.approx(expected)
    assert len(joined) == len(barriers)


def test_correlations_have_n_and_sign():
    barriers, dims = make_tables()
    table = correlation_table(barriers, dims)
    row = table[table.quantity == "barrier"].iloc[0]
    assert row.n == 18
    assert row.spearman_rho < -0.8
    assert row.pearson_r < 0
    assert row.reason == ""


def test_constant_inputs_give_reason():
    barriers, dims = make_tables()
    table = correlation_table(barriers, dims)
    midpoint = table[table.quantity == "midpoint"].iloc[0]
    assert midpoint.reason == "barrier quantity is constant"
    assert midpoint.spearman_rho is None or np.isnan(midpoint.spearman_rho)
    barriers, dims = make_tables(constant=True)
    row = correlation_table(barriers, dims).iloc[0]
    assert row.reason == "dimension is constant"


def test_too_few_pairs_give_reason():
    barriers, dims = make_tables(n_seeds=2)
    barriers = barriers[barriers.width == 16]
    row = correlation_table(barriers, dims).iloc[0]
    assert row.n == 1
    assert "at least 3" in row.reason


def test_correlation_columns_and_kendall():
    barriers, dims = make_tables()
    table = correlation_table(barriers, dims)
    assert list(table.columns) == CORRELATION_COLUMNS
    row = table[table.quantity == "barrier"].iloc[0]
    assert row.kendall_tau < -0.5
    assert 0 <= row.kendall_p < 0.05
    assert row.geometry == "incoming"


def test_bootstrap_interval_contains_estimate():
    barriers, dims = make_tables()
    row = correlation_table(barriers, dims, resamples=500, seed=7).query("quantity == 'barrier'").iloc[0]
    assert row.spearman_low <= row.spearman_rho <= row.spearman_high
    assert row.spearman_low < row.spearman_high
    assert row.bootstrap_seed == 7
    assert row.bootstrap_resamples == 500


def test_bootstrap_is_reproducible_and_seeded():
    x = np.arange(20.0)
    y = x + np.random.default_rng(0).normal(scale=5, size=20)
    assert bootstrap_spearman(x, y, 200, seed=1) == bootstrap_spearman(x, y, 200, seed=1)
    assert bootstrap_spearman(x, y, 200, seed=1) != bootstrap_spearman(x, y, 200, seed=2)


def test_bootstrap_of_perfect_ranking_is_one():
    low, high, valid = bootstrap_spearman(np.arange(10.0), np.arange(10.0) ** 2, 100, seed=0)
    assert low == pytest.approx(1.0)
    assert high == pytest.approx(1.0)
    assert valid == 100


def test_zero_resamples_skip_interval():
    row = correlate(np.arange(5.0), np.array([1.0, 3, 2, 5, 4]), resamples=0)
    assert row["spearman_rho"] == pytest.approx(0.8)
    assert row["spearman_low"] is None
    assert row["reason"] == ""


@pytest.mark.parametrize(("x", "y", "reason"), [
    ([1.0, 2.0], [3.0, 4.0], "n = 2; correlations need at least 3 pairs"),
    ([1.0, 1.0, 1.0], [3.0, 4.0, 5.0], "dimension is constant"),
    ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], "barrier quantity is constant"),
    ([1.0, np.nan, 3.0], [4.0, 5.0, 6.0], "1 pair(s) without a finite value"),
])
def test_correlate_reasons_have_null_coefficients(x, y, reason):
    row = correlate(np.array(x), np.array(y))
    assert row["reason"] == reason
    for column in ("pearson_r", "spearman_rho", "kendall_tau", "spearman_low", "spearman_high"):
        assert row[column] is None
    assert row["bootstrap_seed"] == 0


def test_correlation_arrow_writes_nulls():
    barriers, dims = make_tables(n_seeds=2)
    table = correlation_arrow(correlation_table(barriers[barriers.width == 16], dims))
    assert table.schema.field("spearman_rho").type == pa.float64()
    assert table["spearman_rho"].null_count == table.num_rows
    assert table["kendall_tau"].null_count == table.num_rows


def test_invalid_bootstrap_settings_rejected():
    barriers, dims = make_tables()
    with pytest.raises(ValueError, match="resamples"):
        correlation_table(barriers, dims, resamples=-1)
    with pytest.raises(ValueError, match="confidence"):
        correlation_table(barriers, dims, confidence=1.0)
