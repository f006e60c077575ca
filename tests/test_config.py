"""Config validation: every invalid value is reported by key, value and rule."""

import copy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcpipe.config import ConfigError, check_config, config_errors, load_schema, parse_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
DEFAULT = parse_config((ROOT / "config" / "config.yaml").read_text())


def with_value(path, value):
    config = copy.deepcopy(DEFAULT)
    target = config
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return config


def test_default_and_tiny_configs_are_valid():
    assert config_errors(DEFAULT, SCHEMA) == []
    tiny = parse_config((ROOT / ".test" / "config.yaml").read_text())
    assert config_errors(tiny, SCHEMA) == []


INVALID = [
    (("dataset",), "mnist2", "dataset: invalid value 'mnist2'; allowed values"),
    (("dataset",), 3, "dataset: invalid value 3"),
    (("random_seed",), -1, "random_seed: invalid value -1"),
    (("random_seed",), 1.5, "random_seed: invalid value 1.5"),
    (("data", "test_fraction"), 1.0, "data.test_fraction: invalid value 1.0"),
    (("data", "test_fraction"), "0.2", "data.test_fraction: invalid value '0.2'"),
    (("model", "depth"), 0, "model.depth: invalid value 0"),
    (("model", "widths"), [-8, 16], "model.widths[0]: invalid value -8"),
    (("model", "widths"), [], "model.widths: invalid value []"),
    (("model", "widths"), [16, 16], "items must not repeat"),
    (("model", "widths"), 16, "model.widths: invalid value 16"),
    (("model", "widths"), [16.5], "model.widths[0]: invalid value 16.5"),
    (("training", "learning_rates"), [0.0], "training.learning_rates[0]: invalid value 0.0"),
    (("training", "learning_rates"), [-0.1], "training.learning_rates[0]: invalid value -0.1"),
    (("training", "learning_rates"), [0.1, 0.1], "items must not repeat"),
    (("training", "learning_rates"), ["fast"], "training.learning_rates[0]: invalid value 'fast'"),
    (("training", "seeds"), 1, "training.seeds: invalid value 1"),
    (("training", "seeds"), [], "training.seeds: invalid value []"),
    (("training", "epochs"), 0, "training.epochs: invalid value 0"),
    (("training", "batch_size"), -64, "training.batch_size: invalid value -64"),
    (("training", "momentum"), 1.0, "training.momentum: invalid value 1.0"),
    (("training", "execution"), "gpu", "training.execution: invalid value 'gpu'"),
    (("training", "weight_decay"), 0.1, "training: unknown key(s) ['weight_decay']"),
    (("alignment", "methods"), ["wm", "rebasin"], "alignment.methods[1]: invalid value 'rebasin'"),
    (("alignment", "methods"), [], "alignment.methods: invalid value []"),
    (("alignment", "methods"), ["wm", "wm"], "items must not repeat"),
    (("alignment", "max_passes"), 0, "alignment.max_passes: invalid value 0"),
    (("alignment", "sinkhorn_reg"), 0, "alignment.sinkhorn_reg: invalid value 0"),
    (("barriers", "points"), 24, "barriers.points: invalid value 24; must be an odd integer"),
    (("barriers", "points"), 1, "barriers.points: invalid value 1"),
    (("dimension", "estimators"), ["pca"], "dimension.estimators[0]: invalid value 'pca'"),
    (("modle",), {"depth": 2}, "(top level): unknown key(s) ['modle']"),
]


@pytest.mark.parametrize("path, value, message", INVALID, ids=[".".join(case[0]) + f"={case[1]!r}" for case in INVALID])
def test_invalid_value_reported_by_key(path, value, message):
    errors = config_errors(with_value(path, value), SCHEMA)
    assert len(errors) >= 1
    assert any(message in error for error in errors), errors


def test_all_problems_reported_at_once():
    config = with_value(("model", "widths"), [-8])
    config["training"]["learning_rates"] = [0]
    with pytest.raises(ConfigError) as caught:
        check_config(config, SCHEMA_PATH)
    text = str(caught.value)
    assert "2 problem(s)" in text
    assert "model.widths[0]" in text
    assert "training.learning_rates[0]" in text


def test_repeated_yaml_key_rejected():
    with pytest.raises(ConfigError, match=r"line 3: key 'dataset' appears twice"):
        parse_config("dataset: digits\nrandom_seed: 0\ndataset: mnist\n", "study.yaml")


def test_non_mapping_config_rejected():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config("- 1\n- 2\n")


def test_invalid_yaml_rejected():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("model: [16, 32\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_config_error(data):
    try:
        config = parse_config(data, "fuzz.yaml")
    except ConfigError:
        return
    assert isinstance(config, dict)
    assert isinstance(config_errors(config, SCHEMA), list)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefgimnoprstw_:-[]{}, \n0123456789.'\"#&*!|>", max_size=120))
def test_yaml_like_text_parses_or_raises_config_error(text):
    try:
        config = parse_config(text)
    except ConfigError:
        return
    assert isinstance(config_errors(config, SCHEMA), list)
