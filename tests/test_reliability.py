"""Bad input, divergence, interrupted jobs and exact reruns."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcpipe.cli import main
from lmcpipe.io import InputError, load_checkpoint, table_metadata, write_table

SPEC = {"dataset": "digits", "depth": 2, "width": 64, "lr": 0.05, "epochs": 12, "batch_size": 32}


def train_command(out_dir, spec=SPEC, *extra):
    return [sys.executable, "-m", "lmcpipe", "train", "--spec", json.dumps(spec),
            "--seeds", "0", "1", "--out-dir", str(out_dir), *extra]


def saved_epoch(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive["__meta__"]))["epoch"]
    except (OSError, ValueError, KeyError, EOFError):
        return 0


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_killed_training_resumes_bit_identical(tmp_path, execution):
    reference = tmp_path / "reference"
    subprocess.run(train_command(reference, SPEC, "--execution", execution), check=True,
                   capture_output=True, timeout=600)
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(train_command(resumed, SPEC, "--execution", execution),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = resumed / "training_state.npz"
    deadline = time.monotonic() + 300
    while saved_epoch(state) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = saved_epoch(state)
    assert 3 <= killed_at < SPEC["epochs"]
    assert not (resumed / "seed0" / "params.npz").exists()
    result = subprocess.run(train_command(resumed, SPEC, "--execution", execution),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"resuming training from {state} after epoch" in result.stderr
    assert not state.exists()
    for seed in (0, 1):
        expected, _ = load_checkpoint(reference / f"seed{seed}" / "params.npz")
        actual, _ = load_checkpoint(resumed / f"seed{seed}" / "params.npz")
        for layer in expected:
            for name in expected[layer]:
                np.testing.assert_array_equal(actual[layer][name], expected[layer][name])
        history_a = pq.read_table(reference / f"seed{seed}" / "history.parquet").to_pandas()
        history_b = pq.read_table(resumed / f"seed{seed}" / "history.parquet").to_pandas()
        assert history_a.equals(history_b)


def test_state_of_other_settings_is_ignored(tmp_path, caplog):
    from lmcpipe.data import load_dataset
    from lmcpipe.spec import TrainSpec
    from lmcpipe.training import train_seeds

    digits = load_dataset("digits")
    state = tmp_path / "state.npz"
    first = TrainSpec("digits", 1, 8, 0.05, epochs=3, batch_size=128)
    train_seeds(first, [0, 1], digits, resume_path=state)
    second = TrainSpec("digits", 1, 8, 0.1, epochs=3, batch_size=128)
    fresh = train_seeds(second, [0, 1], digits)
    reused = train_seeds(second, [0, 1], digits, resume_path=state)
    assert "belongs to other settings" in caplog.text
    np.testing.assert_array_equal(fresh[0].params["hidden_0"]["kernel"], reused[0].params["hidden_0"]["kernel"])


def test_diverged_runs_are_excluded_and_counted(tmp_path):
    spec = dict(SPEC, lr=1e30, epochs=2, width=8, warmup_steps=0, depth=1)
    assert main(["train", "--spec", json.dumps(spec), "--seeds", "0", "1", "2",
                 "--out-dir", str(tmp_path)]) == 0
    checkpoints = [str(tmp_path / f"seed{seed}" / "params.npz") for seed in range(3)]
    for checkpoint in checkpoints:
        assert load_checkpoint(checkpoint)[1]["status"] == "diverged"
    history = pq.read_table(tmp_path / "seed0" / "history.parquet").to_pandas()
    assert set(history.status) == {"diverged"}
    for seed, checkpoint in enumerate(checkpoints):
        assert main(["extract", checkpoint, "--out", str(tmp_path / f"n{seed}.parquet")]) == 0
    assert main(["dimension", *checkpoints, "--out", str(tmp_path / "d.parquet")]) == 0
    dimensions = pq.read_table(tmp_path / "d.parquet").to_pandas()
    assert dimensions["dimension"].isna().all()
    assert dimensions["reason"].str.contains("diverged").all()
    assert main(["align", *checkpoints, "--out", str(tmp_path / "a.parquet")]) == 0
    assert main(["wasserstein", *checkpoints, "--out", str(tmp_path / "w.parquet")]) == 0
    assert main(["barrier", *checkpoints, "--alignment", str(tmp_path / "a.parquet"),
                 "--curves-out", str(tmp_path / "c.parquet"), "--barriers-out", str(tmp_path / "b.parquet")]) == 0
    for name in ("a", "w", "b", "c"):
        assert pq.read_table(tmp_path / f"{name}.parquet").num_rows == 0
    tables = tmp_path / "tables"
    assert main(["aggregate", "--barriers", str(tmp_path / "b.parquet"), "--curves", str(tmp_path / "c.parquet"),
                 "--dimensions", str(tmp_path / "d.parquet"), "--alignments", str(tmp_path / "a.parquet"),
                 "--wasserstein", str(tmp_path / "w.parquet"),
                 "--histories", str(tmp_path / "seed0" / "history.parquet"), "--out-dir", str(tables)]) == 0
    assert main(["plot", "--tables", str(tables), "--out-dir", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "barrier_vs_width.png").is_file()


def test_divergence_as_error(tmp_path, capsys):
    spec = dict(SPEC, lr=1e30, epochs=2, width=8, warmup_steps=0)
    assert main(["train", "--spec", json.dumps(spec), "--seeds", "0", "--out-dir", str(tmp_path),
                 "--on-divergence", "error"]) == 2
    err = capsys.readouterr().err
    assert "seed 0 diverged at epoch 1" in err
    assert "lower the learning rate" in err
    assert not (tmp_path / "seed0" / "params.npz").exists()


def test_aggregate_refuses_mixed_versions(tmp_path, capsys):
    paths = {}
    for kind in ("barriers", "curves", "dimensions", "histories", "alignments", "wasserstein"):
        paths[kind] = []
        for index, version in enumerate(["0.1.0", "0.0.9"]):
            path = tmp_path / f"{kind}{index}.parquet"
            metadata = dict(table_metadata("h"), **{"lmcpipe.version": version})
            write_table(pa.table({"x": [index]}), path, metadata)
            paths[kind].append(str(path))
    args = ["aggregate", "--out-dir", str(tmp_path / "tables")]
    for kind, files in paths.items():
        args += [f"--{kind}", *files]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "different lmcpipe versions" in err
    assert "0.0.9: 1 file(s)" in err
    assert "--allow-mixed-versions" in err


def test_pickled_checkpoint_is_never_loaded(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, **{"__meta__": np.array([{"format": "lmcpipe-checkpoint"}], dtype=object)})
    with pytest.raises(InputError, match="params.npz"):
        load_checkpoint(path)


def test_tables_carry_full_metadata(tmp_path):
    assert main(["train", "--spec", json.dumps(dict(SPEC, epochs=1, width=8)), "--seeds", "0",
                 "--out-dir", str(tmp_path)]) == 0
    metadata = pq.read_schema(tmp_path / "seed0" / "history.parquet").metadata
    for key in (b"lmcpipe.version", b"lmcpipe.config_hash", b"lmcpipe.jax_version", b"lmcpipe.backend"):
        assert key in metadata
    assert metadata[b"lmcpipe.backend"] == b"cpu"
