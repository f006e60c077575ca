import numpy as np
import pandas as pd
import pytest

from lmcpipe.aggregate import correlation_table, pair_dimensions


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
