import numpy as np
import pytest

from lmcpipe.alignment import alignment_table
from lmcpipe.barriers import barrier, barrier_tables, interpolation_curve, midpoint, t_grid
from lmcpipe.models import loss_and_correct


def test_grid_includes_ends_and_midpoint():
    ts = t_grid(25)
    assert ts[0] == 0.0
    assert ts[-1] == 1.0
    assert midpoint(ts, ts) == 0.5


@pytest.mark.parametrize("points", [24, 1])
def test_grid_rejects_even_or_small(points):
    with pytest.raises(ValueError, match="odd integer"):
        t_grid(points)


def test_barrier_of_known_curves():
    ts = t_grid(5)
    loss = np.array([1.0, 2.0, 3.0, 2.5, 2.0])
    assert barrier(ts, loss, "loss") == pytest.approx(3.0 - 1.5)
    accuracy = np.array([0.9, 0.8, 0.5, 0.7, 0.7])
    assert barrier(ts, accuracy, "accuracy") == pytest.approx(0.8 - 0.5)
    assert barrier(ts, np.linspace(1, 2, 5), "loss") == pytest.approx(0.0, abs=1e-12)


def test_curve_endpoints_match_models(trained, digits):
    a, b = trained[0].params, trained[1].params
    ts = t_grid(5)
    curve = interpolation_curve(a, b, digits.x_test, digits.y_test, ts, chunk=100)
    loss_a, correct_a = loss_and_correct(a, digits.x_test, digits.y_test)
    loss_b, correct_b = loss_and_correct(b, digits.x_test, digits.y_test)
    assert curve["loss"][0] == pytest.approx(float(loss_a.mean()), rel=1e-5)
    assert curve["loss"][-1] == pytest.approx(float(loss_b.mean()), rel=1e-5)
    assert curve["accuracy"][0] == pytest.approx(float(correct_a.mean()))
    assert curve["accuracy"][-1] == pytest.approx(float(correct_b.mean()))


def test_chunking_does_not_change_curve(trained, digits):
    a, b = trained[0].params, trained[1].params
    ts = t_grid(7)
    whole = interpolation_curve(a, b, digits.x_test, digits.y_test, ts)
    chunked = interpolation_curve(a, b, digits.x_test, digits.y_test, ts, chunk=97)
    np.testing.assert_allclose(whole["loss"], chunked["loss"], rtol=1e-5)
    np.testing.assert_allclose(whole["accuracy"], chunked["accuracy"])


def test_barrier_tables_wm_below_naive(trained, small_spec):
    models = [
        (result.params, {"seed": result.seed, "spec": small_spec.to_dict(), "spec_hash": small_spec.hash()})
        for result in trained
    ]
    alignment = alignment_table(models, ["naive", "wm"])
    curves, barriers = barrier_tables(models, alignment, points=9)
    assert barriers.num_rows == 3 * 2 * 2 * 2
    assert curves.num_rows == barriers.num_rows * 9
    frame = barriers.to_pandas()
    test_loss = frame[(frame.split == "test") & (frame.metric == "loss")].pivot(
        index=["seed_a", "seed_b"], columns="method", values="barrier")
    assert (test_loss["wm"] < test_loss["naive"]).all()
    assert (frame["barrier"] >= 0).all()


def test_test_curves_ignore_train_subset(trained, small_spec):
    # Both splits use the test set's chunk, so the train subset's size cannot
    # change how the test curves are summed.
    models = [
        (result.params, {"seed": result.seed, "spec": small_spec.to_dict(), "spec_hash": small_spec.hash()})
        for result in trained
    ]
    alignment = alignment_table(models, ["naive"])
    tables = [barrier_tables(models, alignment, points=5, train_examples=examples)[0].to_pandas()
              for examples in (None, 7)]
    whole, subset = (frame[frame.split == "test"].reset_index(drop=True) for frame in tables)
    assert len(whole) == 3 * 2 * 5
    np.testing.assert_array_equal(whole["value"].to_numpy(), subset["value"].to_numpy())
    assert not np.array_equal(tables[0][tables[0].split == "train"]["value"].to_numpy(),
                              tables[1][tables[1].split == "train"]["value"].to_numpy())
