import json

import pytest

from lmcpipe.spec import TrainSpec


def test_spec_json_round_trip():
    spec = TrainSpec("digits", 2, 64, 0.01, epochs=3, batch_size=32)
    assert TrainSpec.from_json(spec.to_json()) == spec
    assert spec.hash() == TrainSpec.from_json(spec.to_json()).hash()


def test_spec_hash_changes_with_settings():
    spec = TrainSpec("digits", 2, 64, 0.01, epochs=3, batch_size=32)
    other = TrainSpec("digits", 2, 64, 0.02, epochs=3, batch_size=32)
    assert spec.hash() != other.hash()


@pytest.mark.parametrize(
    "field, value",
    [("depth", 0), ("width", -4), ("lr", 0.0), ("lr", float("nan")), ("epochs", 0),
     ("batch_size", 0), ("momentum", 1.0), ("test_fraction", 1.0)],
)
def test_spec_rejects_invalid_value(field, value):
    values = dict(dataset="digits", depth=1, width=8, lr=0.1, epochs=1, batch_size=8)
    values[field] = value
    with pytest.raises(ValueError, match=field):
        TrainSpec(**values)


def test_spec_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainSpec.from_dict(dict(dataset="digits", depth=1, width=8, lr=0.1, epochs=1,
                                 batch_size=8, weight_decay=0.1))


def test_spec_rejects_invalid_json():
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainSpec.from_json("{depth: 1")


def test_spec_loader_options_round_trip():
    spec = TrainSpec("mnist", 3, 512, 0.01, epochs=2, batch_size=500, data_directory="data/mnist")
    assert TrainSpec.from_json(spec.to_json()) == spec
    npz = TrainSpec("npz", 1, 8, 0.1, epochs=1, batch_size=8, npz_path="mine.npz")
    assert TrainSpec.from_json(npz.to_json()).npz_path == "mine.npz"
    generated = TrainSpec("mnist1d", 1, 8, 0.1, epochs=1, batch_size=8, mnist1d_seed=0)
    assert TrainSpec.from_json(generated.to_json()).mnist1d_seed == 0


def test_spec_unset_loader_options_left_out_of_json():
    spec = TrainSpec("digits", 2, 64, 0.01, epochs=3, batch_size=32)
    assert set(json.loads(spec.to_json())) == {
        "dataset", "depth", "width", "lr", "epochs", "batch_size", "momentum",
        "warmup_steps", "warmup_init_lr", "random_seed", "test_fraction", "split_seed",
    }


def test_spec_hash_changes_with_data_directory():
    first = TrainSpec("mnist", 1, 8, 0.1, epochs=1, batch_size=8, data_directory="a")
    second = TrainSpec("mnist", 1, 8, 0.1, epochs=1, batch_size=8, data_directory="b")
    assert first.hash() != second.hash()


def test_spec_rejects_negative_mnist1d_seed():
    with pytest.raises(ValueError, match="mnist1d_seed"):
        TrainSpec("mnist1d", 1, 8, 0.1, epochs=1, batch_size=8, mnist1d_seed=-1)
