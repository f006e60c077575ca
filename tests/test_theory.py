import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcpipe.cli import main
from lmcpipe.io import metadata_of
from lmcpipe.theory import (
    bounds_table,
    estimated_layer_dimensions,
    study_bounds_table,
    deep_widths,
    log10_entezari_width,
    log10_factor,
    log10_two_layer_width,
    low_dimensional_widths,
)


@pytest.mark.parametrize(
    ("epsilon", "dimension", "expected"),
    [(0.1, 2, 2.0), (0.01, 3, 6.0), (0.5, 1, math.log10(2)), (0.1, 2.5, 2.5)],
)
def test_two_layer_width(epsilon, dimension, expected):
    assert log10_two_layer_width(epsilon, dimension) == pytest.approx(expected)


@pytest.mark.parametrize(("epsilon", "dimension", "expected"), [(0.1, 2, 8.0), (0.01, 3, 20.0)])
def test_entezari_width(epsilon, dimension, expected):
    assert log10_entezari_width(epsilon, dimension) == pytest.approx(expected)


def test_hidden_factor_adds_to_log10_width():
    assert log10_factor(0.1) == 0.0
    assert log10_two_layer_width(0.1, 2, constant=10) == pytest.approx(3.0)
    # ln(1/(0.1 * 0.1)) = ln(100)
    with_log = log10_two_layer_width(0.1, 2, log_power=2, delta=0.1)
    assert with_log == pytest.approx(2.0 + 2 * math.log10(math.log(100)))


def test_delta_ignored_without_log_power():
    assert log10_two_layer_width(0.1, 2, delta=0.5) == log10_two_layer_width(0.1, 2, delta=0.01)


def test_deep_recursion_small_case():
    widths = deep_widths(0.1, input_dim=2, T=1, depth=3)
    assert [width.layer for width in widths] == [1, 2, 3]
    assert widths[0].log10_width == pytest.approx(2.0)
    assert widths[1].log10_width == pytest.approx(100.0)
    assert widths[2].log10_width == pytest.approx(1e100)
    assert [width.exponent for width in widths] == pytest.approx([2.0, 100.0, 1e100])
    assert widths[1].log10_log10_width == pytest.approx(2.0)
    assert widths[2].log10_log10_width == pytest.approx(100.0)
    assert not any(width.overflow for width in widths)


def test_deep_first_layer_equals_two_layer():
    first = deep_widths(0.03, input_dim=7, T=1, depth=1, constant=5, log_power=1)[0]
    assert first.log10_width == pytest.approx(log10_two_layer_width(0.03, 7, constant=5, log_power=1))


def test_deep_uses_per_layer_T():
    widths = deep_widths(0.1, input_dim=2, T=[1, 10], depth=2)
    # log10 m1 = 2 * log10(10); log10 m2 = 10**2 * log10(10 / 0.1)
    assert widths[0].log10_width == pytest.approx(2.0)
    assert widths[1].log10_width == pytest.approx(200.0)
    assert [width.T for width in widths] == [1.0, 10.0]


def test_deep_overflow_is_inf_not_nan():
    widths = deep_widths(0.1, input_dim=2, T=1, depth=5)
    fourth, fifth = widths[3], widths[4]
    assert fourth.overflow
    assert fourth.log10_width == math.inf
    assert fourth.log10_log10_width == pytest.approx(1e100)
    assert fourth.exponent == math.inf
    assert fifth.overflow
    assert fifth.log10_width == math.inf
    assert fifth.log10_log10_width == math.inf
    for width in widths:
        assert not math.isnan(width.log10_width)
        assert not math.isnan(width.log10_log10_width)


def test_deep_overflow_keeps_constant():
    # 10**784 overflows, so log10 m2 is inf but log10 log10 m2 = 784 + log10 F
    # to float precision.
    widths = deep_widths(0.1, input_dim=784, T=1, depth=2, constant=1000)
    assert widths[0].log10_width == pytest.approx(787.0)
    assert widths[1].overflow
    assert widths[1].log10_log10_width == pytest.approx(787.0)


def test_low_dimensional_widths():
    widths = low_dimensional_widths(0.1, [3, 5.5], T=[10, 1])
    # log10 m = k * log10(T / 0.1)
    assert [width.log10_width for width in widths] == pytest.approx([6.0, 5.5])
    assert [width.exponent for width in widths] == [3.0, 5.5]
    assert widths[0].log10_log10_width == pytest.approx(math.log10(6.0))


def test_width_at_most_one_has_null_log10_log10():
    width = low_dimensional_widths(0.5, [1], constant=0.25)[0]
    assert width.log10_width == pytest.approx(math.log10(0.5))
    assert width.log10_log10_width is None


@pytest.mark.parametrize("epsilon", [0, 1, -0.1, 1.5, math.nan, math.inf, "0.1", True])
def test_invalid_epsilon_raises(epsilon):
    with pytest.raises(ValueError, match="invalid epsilon="):
        log10_two_layer_width(epsilon, 2)


@pytest.mark.parametrize("dimension", [0, -2, math.nan])
def test_invalid_dimension_raises(dimension):
    with pytest.raises(ValueError, match="invalid dimension="):
        log10_entezari_width(0.1, dimension)
    with pytest.raises(ValueError, match="invalid input_dim="):
        deep_widths(0.1, dimension)
    with pytest.raises(ValueError, match="invalid dimension=.* for layer 2"):
        low_dimensional_widths(0.1, [2, dimension])


def test_T_not_above_epsilon_raises():
    with pytest.raises(ValueError, match=r"invalid T=0.1 for layer 2: must be greater than epsilon=0.1"):
        deep_widths(0.1, 2, T=[1, 0.1], depth=2)
    with pytest.raises(ValueError, match="invalid T=inf for layer 1: must be finite"):
        deep_widths(0.1, 2, T=math.inf)


def test_wrong_number_of_T_raises():
    with pytest.raises(ValueError, match="give one value or 3"):
        deep_widths(0.1, 2, T=[1, 2], depth=3)


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_invalid_depth_raises(depth):
    with pytest.raises(ValueError, match="invalid depth="):
        deep_widths(0.1, 2, depth=depth)


@pytest.mark.parametrize(
    ("keyword", "value", "name"),
    [("constant", 0, "constant"), ("log_power", -1, "log_power"),
     ("delta", 0, "delta"), ("delta", 1, "delta")],
)
def test_invalid_factor_parameters_raise(keyword, value, name):
    with pytest.raises(ValueError, match=f"invalid {name}="):
        log10_two_layer_width(0.1, 2, **{keyword: value})


def test_bounds_table_rows_and_columns():
    table = bounds_table([0.1, 0.01], input_dim=2, depth=3, T=1, dimensions=[2, 3, 4])
    assert table.column_names == [
        "bound", "layer", "epsilon", "T", "dimension", "exponent",
        "log10_width", "log10_log10_width", "overflow",
    ]
    assert table.schema.field("log10_width").type == pa.float64()
    frame = table.to_pandas()
    assert len(frame) == 2 * (2 + 3 + 3)
    assert frame.groupby("bound").size().to_dict() == {"two_layer": 2, "entezari": 2, "deep": 6, "low_dim": 6}
    assert frame.loc[frame.bound == "two_layer", "T"].isna().all()
    coarse = frame[frame.epsilon == 0.1].set_index(["bound", "layer"])["log10_width"]
    assert coarse[("entezari", 1)] == pytest.approx(8.0)
    assert coarse[("deep", 2)] == pytest.approx(100.0)
    assert coarse[("low_dim", 3)] == pytest.approx(4.0)
    assert not frame.log10_width.isna().any()


def test_bounds_table_reports_overflow():
    frame = bounds_table(0.01, input_dim=2, depth=3).to_pandas()
    last = frame[(frame.bound == "deep") & (frame.layer == 3)].iloc[0]
    assert bool(last.overflow)
    assert last.log10_width == math.inf
    assert last.log10_log10_width == pytest.approx(20000 + math.log10(2))


def test_bounds_table_omits_low_dim_default():
    frame = bounds_table([0.1], input_dim=2, depth=2).to_pandas()
    assert "low_dim" not in set(frame.bound)


def test_bounds_table_wrong_number_of_dimensions_raises():
    with pytest.raises(ValueError, match=r"invalid dimensions=\[2, 3\]"):
        bounds_table([0.1], input_dim=2, depth=3, dimensions=[2, 3])


def test_cli_bounds_prints_and_writes(tmp_path, capsys):
    out = tmp_path / "bounds.parquet"
    assert main(["bounds", "--epsilon", "0.1", "0.01", "--input-dim", "2", "--depth", "3",
                 "--T", "1", "--dimensions", "2", "3", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "log10_width" in printed
    assert "entezari" in printed
    assert "inf" in printed
    assert "nan" not in printed.lower()
    table = pq.read_table(out)
    assert table.num_rows == 16
    metadata = metadata_of(table)
    assert "lmcpipe.version" in metadata
    assert '"epsilons": [0.1, 0.01]' in metadata["lmcpipe.bounds_parameters"]
    frame = table.to_pandas()
    deep = frame[(frame.bound == "deep") & (frame.epsilon == 0.1)]
    assert list(deep.log10_width) == pytest.approx([2.0, 100.0, 1e100])


def test_cli_bounds_without_out_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bounds", "--epsilon", "0.1", "--input-dim", "2"]) == 0
    assert "two_layer" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_cli_bounds_invalid_value_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "bounds.parquet"
    assert main(["bounds", "--epsilon", "0.1", "--input-dim", "2", "--T", "0.05",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "lmcpipe bounds: error: invalid T=0.05 for layer 1: must be greater than "
        "epsilon=0.1, so that T/epsilon > 1"
    )
    assert not out.exists()


def study_dimensions():
    import pandas as pd

    rows = []
    for width, values in ((16, [2.0, 2.5, 3.0]), (64, [4.0, 5.0, 9.0])):
        for seed, value in enumerate(values):
            for layer in (0, 1):
                rows.append({"width": width, "seed": seed, "layer": layer, "geometry": "incoming",
                             "estimator": "participation_ratio", "dimension": value + layer})
    rows.append({"width": 64, "seed": 0, "layer": 0, "geometry": "incoming", "estimator": "twonn",
                 "dimension": float("nan")})
    return pd.DataFrame(rows)


def test_estimated_dimensions_are_medians_at_largest_width():
    ks, width = estimated_layer_dimensions(study_dimensions(), "incoming", "participation_ratio")
    assert width == 64
    assert ks == [5.0, 6.0]
    assert estimated_layer_dimensions(study_dimensions(), "incoming", "twonn") is None


def test_study_bounds_add_low_dim_rows():
    table = study_bounds_table(study_dimensions(), [0.1], input_dim=64).to_pandas()
    low = table[table.bound == "low_dim"]
    assert list(low.layer) == [1, 2]
    assert list(low.exponent) == [5.0, 6.0]
    assert list(low.log10_width) == pytest.approx([5.0, 6.0])
    assert set(low.geometry) == {"incoming"}
    assert set(low.model_width) == {64}
    deep = table[table.bound == "deep"]
    assert len(deep) == 2
    assert deep.geometry.isna().all()


def test_bounds_reject_table_without_dimensions(tmp_path, capsys):
    import pyarrow as pa

    from lmcpipe.cli import main
    from lmcpipe.io import write_table

    path = tmp_path / "barriers.parquet"
    write_table(pa.table({"width": [8], "barrier": [0.1]}), path, {})
    assert main(["bounds", "--epsilon", "0.1", "--dataset", "digits", "--dimensions-table", str(path)]) == 2
    assert "not a dimension table" in capsys.readouterr().err
