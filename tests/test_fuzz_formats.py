"""Property tests: any bytes given to a dataset reader give a result or InputError."""

import gzip

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcpipe.formats import parse_idx, read_cifar_batch, read_idx
from lmcpipe.io import InputError


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parse_idx_any_bytes(data):
    try:
        array = parse_idx(data, "fuzz.idx")
    except InputError as error:
        assert "fuzz.idx" in str(error)
    else:
        assert isinstance(array, np.ndarray)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(1, 4), st.lists(st.integers(0, 6), min_size=1, max_size=4),
       st.binary(max_size=200))
def test_parse_idx_plausible_headers(type_code, ndim, dims, payload):
    dims = (dims * ndim)[:ndim]
    header = bytes([0, 0, type_code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    try:
        array = parse_idx(header + payload, "fuzz.idx")
    except InputError as error:
        assert "fuzz.idx" in str(error)
    else:
        assert array.shape == tuple(dims)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["plain", "gzip", "raw bytes named .gz"]))
def test_read_idx_any_file(tmp_path_factory, data, mode):
    folder = tmp_path_factory.mktemp("idx")
    path = folder / ("file" if mode == "plain" else "file.gz")
    path.write_bytes(gzip.compress(data) if mode == "gzip" else data)
    try:
        read_idx(path)
    except InputError as error:
        assert str(path) in str(error)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3073 * 2 + 10))
def test_read_cifar_any_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1.bin"
    path.write_bytes(data)
    try:
        images, labels = read_cifar_batch(path)
    except InputError as error:
        assert str(path) in str(error)
    else:
        assert images.shape[0] == labels.shape[0] == len(data) // 3073
