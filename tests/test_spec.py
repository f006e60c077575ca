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
