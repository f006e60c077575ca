import numpy as np
import pyarrow as pa
import pytest

from lmcpipe.io import (
    InputError,
    load_checkpoint,
    metadata_of,
    read_table,
    save_checkpoint,
    table_metadata,
    write_table,
)


def test_checkpoint_round_trip(tmp_path):
    params = {"hidden_0": {"kernel": np.ones((3, 4), np.float32), "bias": np.zeros(4, np.float32)},
              "output": {"kernel": np.full((4, 2), 2.0, np.float32), "bias": np.ones(2, np.float32)}}
    path = tmp_path / "params.npz"
    save_checkpoint(path, params, {"seed": 3, "status": "ok"})
    loaded, meta = load_checkpoint(path)
    assert list(loaded) == ["hidden_0", "output"]
    for layer in params:
        for name in params[layer]:
            np.testing.assert_array_equal(loaded[layer][name], params[layer][name])
    assert meta["seed"] == 3
    assert meta["format"] == "lmcpipe-checkpoint"


def test_truncated_checkpoint_names_file(tmp_path):
    path = tmp_path / "params.npz"
    save_checkpoint(path, {"output": {"kernel": np.ones((2, 2)), "bias": np.ones(2)}}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="params.npz"):
        load_checkpoint(path)


def test_missing_checkpoint_names_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "absent.npz")


def test_npz_without_metadata_rejected(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(InputError, match="not an lmcpipe checkpoint"):
        load_checkpoint(path)


def test_table_round_trip_keeps_metadata(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pa.table({"x": [1, 2]}), path, table_metadata("abc"))
    table = read_table(path)
    assert table["x"].to_pylist() == [1, 2]
    assert metadata_of(table)["lmcpipe.config_hash"] == "abc"
    assert "lmcpipe.version" in metadata_of(table)


def test_corrupt_table_names_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="bad.parquet"):
        read_table(path)


def test_write_leaves_no_temporary_files(tmp_path):
    write_table(pa.table({"x": [1]}), tmp_path / "t.parquet", {})
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_write_through_symlink_keeps_link(tmp_path):
    target = tmp_path / "data" / "table.parquet"
    target.parent.mkdir()
    write_table(pa.table({"x": [1]}), target, {})
    link = tmp_path / "link.parquet"
    link.symlink_to(target)
    write_table(pa.table({"x": [2]}), link, {})
    assert link.is_symlink()
    assert read_table(target).column("x").to_pylist() == [2]


def test_write_to_fifo_keeps_fifo(tmp_path):
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_table(pa.table({"x": [1, 2]}), fifo, {})
    reader.join(30)
    assert fifo.is_fifo()
    assert received and received[0][:4] == b"PAR1"


def test_written_file_follows_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o027)
    try:
        write_table(pa.table({"x": [1]}), tmp_path / "t.parquet", {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "t.parquet").stat().st_mode) == 0o640
