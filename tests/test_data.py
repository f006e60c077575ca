import numpy as np
import pytest

from lmcpipe.data import check_arrays, load_dataset


def test_digits_split_and_scaling(digits):
    assert digits.x_train.shape == (1437, 64)
    assert digits.x_test.shape == (360, 64)
    assert digits.x_train.dtype == np.float32
    assert digits.x_train.min() == 0.0
    assert digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_digits_split_is_fixed():
    first = load_dataset("digits")
    second = load_dataset("digits")
    np.testing.assert_array_equal(first.x_test, second.x_test)
    other = load_dataset("digits", split_seed=1)
    assert not np.array_equal(first.x_test, other.x_test)


def test_unknown_dataset_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'mnist2'"):
        load_dataset("mnist2")


def test_check_arrays_rejects_label_out_of_range():
    with pytest.raises(ValueError, match="labels must lie in"):
        check_arrays("toy", np.zeros((2, 3), np.float32), np.array([0, 10]), 10)


def test_check_arrays_rejects_count_mismatch():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        check_arrays("toy", np.zeros((3, 3), np.float32), np.array([0, 1]), 10)


def test_check_arrays_rejects_unscaled_inputs():
    with pytest.raises(ValueError, match="scaled"):
        check_arrays("toy", np.full((2, 3), 255.0, np.float32), np.array([0, 1]), 10)
