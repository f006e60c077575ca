"""Datasets: arrays of flattened inputs in [0, 1] and integer labels.

Every loader returns a :class:`Dataset` with a fixed train/test split, so that
all models of a study and every later step see the same examples.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset split into train and test sets.

    Attributes:
        name: dataset name.
        x_train, x_test: float32 arrays of shape ``(n, features)`` in [0, 1].
        y_train, y_test: int32 label arrays of shape ``(n,)`` in
            ``[0, n_classes)``.
        n_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(x, y)`` of the ``"train"`` or ``"test"`` split."""
        if name == "train":
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise ValueError(f"unknown split {name!r}; expected 'train' or 'test'")


def check_arrays(name: str, x: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    """Raise ``ValueError`` unless ``x`` and ``y`` form a valid split."""
    if x.ndim != 2 or y.ndim != 1:
        raise ValueError(
            f"{name}: expected inputs of shape (n, features) and labels of shape "
            f"(n,), got {x.shape} and {y.shape}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no examples")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"{name}: labels must lie in [0, {n_classes}), got range "
            f"[{y.min()}, {y.max()}]"
        )
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name}: inputs must be finite and scaled to [0, 1]")


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Load scikit-learn's bundled 8x8 digits (1797 images, 10 classes).

    Pixels (integers 0..16) are divided by 16. The split is stratified by
    class and fixed by ``split_seed``.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, n_classes=10)


LOADERS: dict[str, Callable[..., Dataset]] = {"digits": load_digits}


def load_dataset(name: str, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Load the dataset ``name`` and check its shapes, labels and scaling."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(LOADERS)}")
    dataset = LOADERS[name](test_fraction=test_fraction, split_seed=split_seed)
    check_arrays(f"{name} train split", dataset.x_train, dataset.y_train, dataset.n_classes)
    check_arrays(f"{name} test split", dataset.x_test, dataset.y_test, dataset.n_classes)
    return dataset


def load_for_spec(spec) -> Dataset:
    """Load the dataset a :class:`~lmcpipe.spec.TrainSpec` was trained on."""
    return load_dataset(spec.dataset, spec.test_fraction, spec.split_seed)
