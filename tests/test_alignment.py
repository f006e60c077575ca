import warnings

import numpy as np
import pytest

from conftest import random_mlp
from lmcpipe.alignment import (
    METHODS,
    AlignmentError,
    AlignOptions,
    PassLimitWarning,
    align,
    alignment_table,
    coordinate_descent,
    seed_pairs,
    sinkhorn_plan,
)
from lmcpipe.barriers import barrier, interpolation_curve, t_grid
from lmcpipe.permutation import apply_permutations, invert, permutation_spec, random_permutations
from lmcpipe.statistics import activation_moments

MATCHING_METHODS = [method for method in METHODS if method != "naive"]


def plant(params, seed):
    spec = permutation_spec(params)
    perms = random_permutations(spec, np.random.default_rng(seed))
    return spec, perms, apply_permutations(spec, perms, params)


@pytest.mark.parametrize("method", MATCHING_METHODS)
def test_planted_permutation_recovered(method, trained, digits):
    params = trained[0].params
    spec, perms, permuted = plant(params, seed=5)
    moments = activation_moments(params, digits.x_train, permuted)
    result = align(method, params, permuted, moments=moments)
    assert result.converged
    for index, (name, perm) in enumerate(perms.items()):
        # Unit i of B' = permuted is unit perm[i] of A, so A's unit i is B's invert(perm)[i].
        expected = invert(perm)
        if method in ("am", "am_corr"):
            # Units dead on the whole training set have no activation to
            # match, so only live units have a unique partner.
            live = np.diag(moments.inputs[index + 1]) > 0
            assert live.sum() >= len(live) // 2
            np.testing.assert_array_equal(result.perms[name][live], expected[live])
        else:
            np.testing.assert_array_equal(result.perms[name], expected)
    aligned = apply_permutations(spec, result.perms, permuted)
    ts = t_grid(25)
    curve = interpolation_curve(params, aligned, digits.x_test, digits.y_test, ts)
    assert barrier(ts, curve["loss"], "loss") < 1e-5


def test_naive_is_identity(trained):
    result = align("naive", trained[0].params, trained[1].params)
    for name, perm in result.perms.items():
        np.testing.assert_array_equal(perm, np.arange(perm.size))


def test_objective_never_decreases():
    for seed in range(5):
        a, b = random_mlp(seed, depth=4, width=16), random_mlp(seed + 100, depth=4, width=16)
        result = align("wm", a, b, AlignOptions(seed=seed))
        assert result.passes >= 2
        assert np.all(np.diff(result.objectives) >= -1e-9 * abs(result.objectives[0]))


def test_wm_objective_beats_identity(trained):
    a, b = trained[0].params, trained[1].params
    result = align("wm", a, b)
    identity = sum(float(np.vdot(a[layer][name], b[layer][name])) for layer in a for name in a[layer])
    assert result.objective > identity


def test_pass_limit_warns():
    a, b = random_mlp(0, depth=4, width=32), random_mlp(1, depth=4, width=32)
    spec = permutation_spec(a)
    with pytest.warns(PassLimitWarning, match="pass limit"):
        _, objectives, converged = coordinate_descent(spec, a, b, list(spec.axes), np.random.default_rng(0), max_passes=1)
    assert not converged
    assert len(objectives) == 1


@pytest.mark.parametrize("method", MATCHING_METHODS)
def test_dead_and_duplicate_neurons(method):
    a = random_mlp(0, depth=2, width=8)
    inputs = np.random.default_rng(0).random((300, 64)).astype(np.float32)
    a["hidden_0"]["kernel"][:, 2] = 0.0
    a["hidden_0"]["bias"][2] = 0.0
    a["hidden_0"]["kernel"][:, 5] = a["hidden_0"]["kernel"][:, 4]
    a["hidden_0"]["bias"][5] = a["hidden_0"]["bias"][4]
    spec, perms, b = plant(a, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = align(method, a, b, moments=activation_moments(a, inputs, b))
    for perm in result.perms.values():
        np.testing.assert_array_equal(np.sort(perm), np.arange(perm.size))
    aligned = apply_permutations(spec, result.perms, b)
    # Duplicated units may be matched either way round, and activation
    # matching cannot tell a dead unit from another, but every other unit's
    # incoming weights must coincide with A's.
    live = [unit for unit in range(8) if unit not in (2, 4, 5)]
    np.testing.assert_allclose(aligned["hidden_0"]["kernel"][:, live], a["hidden_0"]["kernel"][:, live])


def test_unknown_method_rejected(trained):
    with pytest.raises(ValueError, match="unknown alignment method 'wm2'"):
        align("wm2", trained[0].params, trained[1].params)


def test_shape_mismatch_rejected(trained):
    a = random_mlp(0, depth=2, width=8)
    b = random_mlp(1, depth=2, width=9)
    with pytest.raises(ValueError, match="has size 9 but permutation hidden_0 has size 8"):
        align("wm", a, b)


@pytest.mark.parametrize("method", ["wm_cov", "am", "am_corr"])
def test_statistics_methods_need_moments(method, trained):
    with pytest.raises(ValueError, match="needs activation statistics"):
        align(method, trained[0].params, trained[1].params)


def test_sinkhorn_nonconvergence_raises():
    rng = np.random.default_rng(0)
    cost = rng.random((40, 40))
    with pytest.raises(AlignmentError, match="did not converge"):
        sinkhorn_plan(cost, reg=1e-4, max_iter=3, tol=1e-3)


def test_sinkhorn_small_reg_fails_loudly_or_converges():
    a, b = random_mlp(0, depth=1, width=32), random_mlp(1, depth=1, width=32)
    try:
        result = align("sinkhorn", a, b, AlignOptions(sinkhorn_reg=1e-5, sinkhorn_max_iter=50))
    except AlignmentError as error:
        assert "raise alignment.sinkhorn_reg" in str(error)
    else:
        assert sorted(result.perms["hidden_0"]) == list(range(32))


def models_with_seeds(seeds):
    return [({}, {"seed": seed}) for seed in seeds]


def test_seed_pairs_all():
    assert seed_pairs(models_with_seeds([0, 1, 2, 3])) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_seed_pairs_disjoint():
    models = models_with_seeds(range(8))
    assert seed_pairs(models, "disjoint") == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_seed_pairs_disjoint_skips_missing_partner():
    # Seed 2 diverged: seed 3 has no partner, and seed 4 (odd count) neither.
    models = models_with_seeds([0, 1, 3, 4])
    assert seed_pairs(models, "disjoint") == [(0, 1)]


def test_seed_pairs_unknown_pairing_rejected():
    with pytest.raises(ValueError, match="unknown pairing 'some'"):
        seed_pairs(models_with_seeds([0, 1]), "some")


def test_alignment_table_disjoint_pairs(trained, small_spec):
    models = [(result.params, {"seed": seed, "spec": small_spec.to_dict()})
              for seed, result in zip([0, 1, 2], trained)]
    table = alignment_table(models, ["naive"], pairing="disjoint").to_pandas()
    assert set(zip(table.seed_a, table.seed_b)) == {(0, 1)}
    table = alignment_table(models, ["naive"], pairing="all").to_pandas()
    assert set(zip(table.seed_a, table.seed_b)) == {(0, 1), (0, 2), (1, 2)}
