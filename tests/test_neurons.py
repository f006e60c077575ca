import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import random_mlp
from lmcpipe.io import load_checkpoint, metadata_of, save_checkpoint
from lmcpipe.neurons import extract_to_file, layer_matrix, neuron_table

KEYS = {"dataset": "digits", "depth": 2, "width": 24, "lr": 0.1, "seed": 0}


def test_one_row_per_hidden_neuron():
    params = random_mlp(0, depth=2, width=24)
    table = neuron_table(params, KEYS)
    assert table.num_rows == 48
    assert table["layer"].to_pylist() == [0] * 24 + [1] * 24
    assert table["neuron"].to_pylist()[:3] == [0, 1, 2]
    assert table.schema.field("incoming").type == pa.list_(pa.float32(), 64)
    assert table.schema.field("outgoing").type == pa.list_(pa.float32(), 24)


def test_layer_matrix_round_trip():
    params = random_mlp(0, depth=2, width=24)
    table = neuron_table(params, KEYS)
    np.testing.assert_array_equal(layer_matrix(table, 0), params["hidden_0"]["kernel"].T.astype(np.float32))
    np.testing.assert_array_equal(layer_matrix(table, 1), params["hidden_1"]["kernel"].T.astype(np.float32))
    np.testing.assert_array_equal(layer_matrix(table, 1, "outgoing"), params["output"]["kernel"].astype(np.float32))
    biases = table.filter(pa.compute.equal(table["layer"], 1))["bias"].to_numpy()
    np.testing.assert_array_equal(biases, params["hidden_1"]["bias"].astype(np.float32))


def test_padding_is_null():
    params = random_mlp(0, depth=2, width=24)
    table = neuron_table(params, KEYS)
    row = table.slice(30, 1)["incoming"].to_pylist()[0]
    assert len(row) == 64
    assert row[24:] == [None] * 40


def test_extract_file_readable_by_pandas_polars_duckdb(tmp_path):
    params = random_mlp(0, depth=1, width=12)
    checkpoint = tmp_path / "params.npz"
    spec = {"dataset": "digits", "depth": 1, "width": 12, "lr": 0.1, "epochs": 1, "batch_size": 8}
    save_checkpoint(checkpoint, params, {"spec": spec, "spec_hash": "h", "seed": 4, "status": "ok"})
    out = tmp_path / "neurons.parquet"
    extract_to_file(checkpoint, out)
    table = pq.read_table(out)
    assert metadata_of(table)["lmcpipe.config_hash"] == "h"
    assert table["seed"].to_pylist() == [4] * 12
    frame = table.to_pandas()
    assert np.stack(frame["incoming"]).shape == (12, 64)
    assert pl.read_parquet(out).height == 12
    rows = duckdb.connect().execute(f"select count(*) from '{out}' where layer = 0").fetchall()
    count = rows[0][0]
    assert count == 12
    loaded, _ = load_checkpoint(checkpoint)
    np.testing.assert_array_equal(np.stack(frame["incoming"]), loaded["hidden_0"]["kernel"].T)
