"""Training specifications: the settings that determine one trained network.

A :class:`TrainSpec` is everything a training run depends on except the seed
index. It travels as JSON between the workflow and the ``lmcpipe train``
command, is stored in every checkpoint, and its hash identifies the run in the
metadata of every table derived from it.

The loader options (``data_directory``, ``mnist1d_seed``, ``npz_path``) are
left out of the JSON while they are ``None``, so a spec that needs none of
them has the same JSON and hash as before they existed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

# Loader options omitted from the JSON while they are None.
OPTIONAL_FIELDS = ("data_directory", "mnist1d_seed", "npz_path")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Settings of one training run, shared by all seeds of a setting.

    Attributes:
        dataset: dataset name (see :func:`lmcpipe.data.load_dataset`).
        depth: number of hidden layers.
        width: units in every hidden layer.
        lr: peak learning rate of the warmup-cosine schedule.
        epochs: passes over the training set.
        batch_size: examples per SGD step; the last incomplete batch of each
            epoch is dropped so that every step has the same shape.
        momentum: SGD momentum (heavy ball, as in ``optax.sgd``).
        warmup_steps: steps of linear warmup from ``warmup_init_lr`` to ``lr``.
        warmup_init_lr: learning rate at step 0.
        random_seed: root of every PRNG key of the study.
        test_fraction: share of the dataset held out for testing, where the
            dataset has no fixed split.
        split_seed: seed of that train/test split.
        data_directory: folder of the dataset files (``mnist``,
            ``fashion_mnist``, ``cifar10``); ``None`` means ``data/<dataset>``.
        mnist1d_seed: seed of the MNIST-1D generator; ``None`` means the
            ``mnist1d`` package's default.
        npz_path: archive of the ``npz`` dataset.
    """

    dataset: str
    depth: int
    width: int
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9
    warmup_steps: int = 10
    warmup_init_lr: float = 1e-6
    random_seed: int = 0
    test_fraction: float = 0.2
    split_seed: int = 0
    data_directory: str | None = None
    mnist1d_seed: int | None = None
    npz_path: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.depth >= 1, "depth", "an integer >= 1"),
            (self.width >= 1, "width", "an integer >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr", "a finite number > 0"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (0 <= self.momentum < 1, "momentum", "a number in [0, 1)"),
            (self.warmup_steps >= 0, "warmup_steps", "an integer >= 0"),
            (self.warmup_init_lr >= 0, "warmup_init_lr", "a number >= 0"),
            (0 < self.test_fraction < 1, "test_fraction", "a number in (0, 1)"),
            (self.mnist1d_seed is None or self.mnist1d_seed >= 0, "mnist1d_seed",
             "an integer >= 0 or null"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(
                    f"invalid training setting {name}={getattr(self, name)!r}: "
                    f"expected {allowed}"
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSpec":
        """Build a spec from a mapping, rejecting unknown keys by name."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"training spec is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError("training spec must be a JSON object")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for name in OPTIONAL_FIELDS:
            if values[name] is None:
                del values[name]
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def hash(self) -> str:
        """Return the first 16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def run_keys(self) -> dict[str, Any]:
        """Return the identifying columns shared by every table of this setting."""
        return {
            "dataset": self.dataset,
            "depth": self.depth,
            "width": self.width,
            "lr": self.lr,
        }


def format_lr(lr: float) -> str:
    """Format a learning rate the way it appears in result paths (``repr``)."""
    return repr(float(lr))


def run_key_fields() -> list:
    """Return the pyarrow fields of the run keys, first in every per-setting table."""
    import pyarrow as pa

    return [
        pa.field("dataset", pa.string()),
        pa.field("depth", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("lr", pa.float64()),
    ]
