"""Neuron tables: one row per hidden unit of a trained MLP.

Columns of a neuron table (one Parquet file per model):

``dataset, depth, width, lr, seed``
    the run's identifying columns;
``layer, neuron``
    hidden layer index (0 is nearest the input) and unit index;
``fan_in, fan_out``
    number of incoming and outgoing weights of the unit;
``incoming``
    ``fixed_size_list<float32>``: the unit's incoming weights (its column of
    the layer's kernel);
``bias``
    float32;
``outgoing``
    ``fixed_size_list<float32>``: the unit's row of the next layer's kernel.

A column of fixed-size lists has one size per file, so the lists are as long
as the largest fan-in (fan-out) among the model's hidden layers, and the
entries past a row's ``fan_in`` (``fan_out``) are null. A one-hidden-layer
model, or any layer of maximal fan-in, has no padding. :func:`layer_matrix`
returns a layer's weights as a dense array.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmcpipe.layout import layer_names


def _padded_lists(rows: list[np.ndarray], size: int) -> pa.FixedSizeListArray:
    values = np.zeros((len(rows), size), np.float32)
    mask = np.ones((len(rows), size), bool)
    for index, row in enumerate(rows):
        values[index, : row.size] = row
        mask[index, : row.size] = False
    flat = pa.array(values.ravel(), type=pa.float32(), mask=mask.ravel())
    return pa.FixedSizeListArray.from_arrays(flat, size)


def neuron_table(params: Mapping[str, Mapping[str, np.ndarray]], keys: Mapping[str, Any]) -> pa.Table:
    """Return the neuron table of one MLP, with ``keys`` as constant leading columns."""
    names = layer_names(params)
    columns: dict[str, list] = {
        "layer": [], "neuron": [], "fan_in": [], "fan_out": [], "bias": []
    }
    incoming: list[np.ndarray] = []
    outgoing: list[np.ndarray] = []
    for index, name in enumerate(names[:-1]):
        kernel = np.asarray(params[name]["kernel"], np.float32)
        bias = np.asarray(params[name]["bias"], np.float32)
        next_kernel = np.asarray(params[names[index + 1]]["kernel"], np.float32)
        fan_in, units = kernel.shape
        for unit in range(units):
            columns["layer"].append(index)
            columns["neuron"].append(unit)
            columns["fan_in"].append(fan_in)
            columns["fan_out"].append(next_kernel.shape[1])
            columns["bias"].append(bias[unit])
            incoming.append(kernel[:, unit])
            outgoing.append(next_kernel[unit, :])
    n_rows = len(incoming)
    arrays: dict[str, pa.Array] = {}
    for key, value in keys.items():
        arrays[key] = pa.array([value] * n_rows)
    arrays["layer"] = pa.array(columns["layer"], pa.int32())
    arrays["neuron"] = pa.array(columns["neuron"], pa.int32())
    arrays["fan_in"] = pa.array(columns["fan_in"], pa.int32())
    arrays["fan_out"] = pa.array(columns["fan_out"], pa.int32())
    arrays["incoming"] = _padded_lists(incoming, max(columns["fan_in"]))
    arrays["bias"] = pa.array(columns["bias"], pa.float32())
    arrays["outgoing"] = _padded_lists(outgoing, max(columns["fan_out"]))
    return pa.table(arrays)


def layer_matrix(table: pa.Table, layer: int, column: str = "incoming") -> np.ndarray:
    """Return ``column`` of hidden layer ``layer`` as a ``(units, fan)`` float32 array.

    Rows are ordered by ``neuron``; padding past the layer's fan is dropped.
    """
    rows = table.filter(pc.equal(table["layer"], layer))
    if rows.num_rows == 0:
        raise ValueError(f"no neurons in layer {layer}")
    fan_column = "fan_in" if column == "incoming" else "fan_out"
    fans = set(rows[fan_column].to_pylist())
    if len(fans) != 1:
        raise ValueError(f"layer {layer} has inconsistent {fan_column} values {sorted(fans)}")
    fan = fans.pop()
    order = np.argsort(rows["neuron"].to_numpy())
    lists = rows[column].combine_chunks()
    width = lists.type.list_size
    values = lists.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return np.asarray(values[order, :fan], np.float32)


def extract_to_file(checkpoint, out) -> None:
    """Write the neuron table of the model in ``checkpoint`` to ``out``."""
    from lmcpipe.io import load_checkpoint, table_metadata, write_table
    from lmcpipe.spec import TrainSpec

    params, meta = load_checkpoint(checkpoint)
    spec = TrainSpec.from_dict(meta["spec"])
    keys = {**spec.run_keys(), "seed": meta["seed"]}
    table = neuron_table(params, keys)
    write_table(table, out, table_metadata(meta["spec_hash"], status=meta["status"]))
