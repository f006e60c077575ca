import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmcpipe.cli import main
from lmcpipe.io import load_checkpoint

SPEC = {"dataset": "digits", "depth": 1, "width": 16, "lr": 0.05, "epochs": 2, "batch_size": 128}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    assert main(["train", "--spec", json.dumps(SPEC), "--seeds", "0", "1", "2",
                 "--out-dir", str(folder)]) == 0
    return folder


def test_train_writes_checkpoints_and_histories(run_dir):
    for seed in range(3):
        params, meta = load_checkpoint(run_dir / f"seed{seed}" / "params.npz")
        assert meta["seed"] == seed
        assert meta["spec"]["width"] == 16
        assert params["hidden_0"]["kernel"].shape == (64, 16)
        history = pq.read_table(run_dir / f"seed{seed}" / "history.parquet").to_pandas()
        assert list(history.epoch) == [0, 1, 2]


def test_steps_chain_through_cli(run_dir, capsys):
    checkpoints = [str(run_dir / f"seed{seed}" / "params.npz") for seed in range(3)]
    neurons = [str(run_dir / f"seed{seed}" / "neurons.parquet") for seed in range(3)]
    assert main(["extract", checkpoints[0], "--out", neurons[0]]) == 0
    first = pq.read_table(neurons[0])
    assert main(["extract", *checkpoints, "--out", *neurons]) == 0
    assert pq.read_table(neurons[0]).equals(first)
    assert [pq.read_table(path).column("seed")[0].as_py() for path in neurons] == [0, 1, 2]
    assert main(["extract", *checkpoints, "--out", *neurons[:2]]) == 2
    assert "give one output per checkpoint" in capsys.readouterr().err

    assert main(["dimension", *checkpoints, "--subsamples", "2", "--out", str(run_dir / "dims.parquet")]) == 0
    dims = pq.read_table(run_dir / "dims.parquet").to_pandas()
    assert len(dims) == 3 * (6 + 6 + 4)

    assert main(["wasserstein", *checkpoints, "--out", str(run_dir / "wasserstein.parquet")]) == 0
    assert main(["align", *checkpoints, "--methods", "naive", "wm",
                 "--out", str(run_dir / "alignment.parquet")]) == 0
    assert main(["wasserstein", *checkpoints, "--out", str(run_dir / "wasserstein.parquet")]) == 0
    assert main(["barrier", *checkpoints, "--alignment", str(run_dir / "alignment.parquet"),
                 "--points", "5", "--curves-out", str(run_dir / "curves.parquet"),
                 "--barriers-out", str(run_dir / "barriers.parquet")]) == 0
    alignment = pq.read_table(run_dir / "alignment.parquet").to_pandas()
    assert len(alignment) == 3 * 2
    barriers = pq.read_table(run_dir / "barriers.parquet").to_pandas()
    assert len(barriers) == 3 * 2 * 2 * 2

    histories = [str(run_dir / f"seed{seed}" / "history.parquet") for seed in range(3)]
    tables = run_dir / "tables"
    assert main(["aggregate", "--barriers", str(run_dir / "barriers.parquet"),
                 "--curves", str(run_dir / "curves.parquet"),
                 "--dimensions", str(run_dir / "dims.parquet"),
                 "--alignments", str(run_dir / "alignment.parquet"),
                 "--histories", *histories, "--wasserstein", str(run_dir / "wasserstein.parquet"),
                 "--bootstrap-resamples", "100", "--bootstrap-seed", "5", "--out-dir", str(tables)]) == 0
    correlations = pq.read_table(tables / "correlations.parquet").to_pandas()
    assert set(correlations.method) == {"naive", "wm"}
    assert (correlations.n == 3).all()
    assert (correlations.bootstrap_seed == 5).all()

    assert main(["bounds", "--dataset", "digits", "--epsilon", "0.1", "--dimensions-table",
                 str(tables / "dimensions.parquet"), "--out", str(tables / "bounds.parquet")]) == 0
    bounds = pq.read_table(tables / "bounds.parquet").to_pandas()
    assert set(bounds.bound) == {"two_layer", "entezari", "deep", "low_dim"}

    assert main(["convergence", *checkpoints, "--widths", "8", "16", "--repeats", "2",
                 "--subspace-dimensions", "2", "--out", str(tables / "convergence.parquet"),
                 "--fit-out", str(tables / "convergence_fit.parquet")]) == 0

    assert main(["plot", "--tables", str(tables), "--out-dir", str(run_dir / "plots")]) == 0
    assert main(["plot", "--tables", str(tables), "--out-dir", str(run_dir / "plots"),
                 "bounds", "convergence"]) == 0
    for name in ("barrier_vs_width", "barrier_vs_lr", "dimension_vs_lr", "barrier_vs_dimension",
                 "interpolation_curves", "bounds", "convergence"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000

    assert main(["summary", "--tables", str(tables)]) == 0
    assert "mean test loss barrier" in capsys.readouterr().out


def test_align_disjoint_pairs(run_dir):
    checkpoints = [str(run_dir / f"seed{seed}" / "params.npz") for seed in range(3)]
    out = run_dir / "disjoint.parquet"
    assert main(["align", *checkpoints, "--methods", "naive", "--pairs", "disjoint",
                 "--out", str(out)]) == 0
    alignment = pq.read_table(out).to_pandas()
    assert list(zip(alignment.seed_a, alignment.seed_b)) == [(0, 1)]


def test_train_missing_dataset_is_one_line_error(tmp_path, capsys):
    spec = dict(SPEC, dataset="mnist", data_directory=str(tmp_path / "none"))
    assert main(["train", "--spec", json.dumps(spec), "--seeds", "0", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "dataset mnist not found" in err
    assert f"lmcpipe data fetch mnist --to {tmp_path / 'none'}" in err
    assert "Traceback" not in err


def test_bad_spec_is_one_line_error(tmp_path, capsys):
    bad = dict(SPEC, width=-1)
    assert main(["train", "--spec", json.dumps(bad), "--seeds", "0", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid training setting width=-1" in err
    assert "Traceback" not in err


def test_corrupt_checkpoint_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "params.npz"
    bad.write_bytes(b"not a zip")
    assert main(["extract", str(bad), "--out", str(tmp_path / "n.parquet")]) == 2
    err = capsys.readouterr().err
    assert "params.npz: not a readable checkpoint" in err
    assert not (tmp_path / "n.parquet").exists()


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "lmcpipe", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("lmcpipe ")


def test_unknown_plot_is_one_line_error(tmp_path, capsys):
    assert main(["plot", "--tables", str(tmp_path), "--out-dir", str(tmp_path), "histogram"]) == 2
    assert "unknown plot(s) ['histogram']" in capsys.readouterr().err


def test_missing_table_for_plot_is_one_line_error(tmp_path, capsys):
    assert main(["plot", "--tables", str(tmp_path), "--out-dir", str(tmp_path), "bounds"]) == 2
    assert "bounds.parquet: table not found" in capsys.readouterr().err
