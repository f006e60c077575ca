"""Run the Snakemake workflow end to end on the tiny study in ``.test/``."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
TABLES = ["barriers", "curves", "dimensions", "histories", "alignments", "correlations", "bounds",
          "convergence", "convergence_fit"]
PLOTS = ["barrier_vs_width", "barrier_vs_lr", "dimension_vs_lr", "barrier_vs_dimension",
         "interpolation_curves", "bounds", "convergence"]

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
               "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


# Wall-clock measurements differ between runs by nature; every other column
# must be identical.
TIMING_COLUMNS = {"seconds", "statistics_seconds"}


def new_study(tmp_path_factory, name):
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "config").mkdir()
    shutil.copy(ROOT / ".test" / "config.yaml", workdir / "config" / "config.yaml")
    return workdir


def assert_same_tables(first: Path, second: Path):
    for name in TABLES:
        a = pd.read_parquet(first / "results" / "tables" / f"{name}.parquet")
        b = pd.read_parquet(second / "results" / "tables" / f"{name}.parquet")
        columns = [column for column in a.columns if column not in TIMING_COLUMNS]
        pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=True, obj=name)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = new_study(tmp_path_factory, "study")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_study_writes_tables_and_plots(study):
    import pyarrow.parquet as pq

    for name in TABLES:
        path = study / "results" / "tables" / f"{name}.parquet"
        assert path.is_file()
        metadata = pq.read_schema(path).metadata
        for key in (b"lmcpipe.version", b"lmcpipe.config_hash", b"lmcpipe.jax_version", b"lmcpipe.backend"):
            assert key in metadata, (name, key)
    for name in PLOTS:
        assert (study / "results" / "plots" / f"{name}.png").stat().st_size > 1000
    barriers = pd.read_parquet(study / "results" / "tables" / "barriers.parquet")
    assert set(barriers.width) == {8, 16}
    assert set(barriers.method) == {"naive", "wm"}
    assert len(barriers) == 2 * 1 * 2 * 2 * 2
    for column in ["dataset", "depth", "width", "lr", "seed_a", "seed_b", "method",
                   "split", "metric", "barrier", "midpoint"]:
        assert column in barriers.columns
    dimensions = pd.read_parquet(study / "results" / "tables" / "dimensions.parquet")
    assert set(dimensions.estimator) == {"participation_ratio", "pca_90", "pca_95", "pca_99", "twonn", "mle"}
    assert set(dimensions.geometry) == {"incoming", "covariance", "activations"}
    # 2 settings x 2 seeds x 1 layer x (6 + 6 + 4) estimates.
    assert len(dimensions) == 2 * 2 * 16
    for column in ["spread", "n_points", "n_removed", "reason"]:
        assert column in dimensions.columns
    correlations = pd.read_parquet(study / "results" / "tables" / "correlations.parquet")
    # One pair per setting gives n = 2 in every group, so every row has a reason.
    assert (correlations.n == 2).all()
    assert (correlations.reason != "").all()
    fits = pd.read_parquet(study / "results" / "tables" / "convergence_fit.parquet")
    assert set(fits.source) == {"gaussian", "subspace2", "trained"}
    assert fits.set_index("source").loc["gaussian", "reason"] == ""


def test_report_has_plots_and_captions(study):
    result = snakemake(study, "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-4000:]
    report = (study / "results" / "report.html").read_text(errors="replace")
    for name in PLOTS:
        assert f"{name}.png" in report
    assert "Spearman" in report


def test_worker_ran_every_job(study):
    log = (study / "results" / "logs" / "worker.log").read_text()
    assert "serving on" in log
    assert "rejected" not in log
    assert "caller gone" not in log
    exits = re.findall(r"pid \d+: exit (\d+)", log)
    commands = re.findall(r"pid \d+: lmcpipe (\w+)", log)
    assert len(exits) == len(commands) >= 15
    assert set(exits) == {"0"}
    assert {"train", "extract", "dimension", "align", "barrier", "aggregate", "plot"} <= set(commands)
    assert log.rstrip().endswith("stopped")


def test_jobs_fill_compilation_cache(study):
    cache = study / "results" / ".jax_cache"
    assert any(cache.glob("*-cache")), f"no compiled programs in {cache}"


def test_rerun_does_nothing(study):
    worker_log = (study / "results" / "logs" / "worker.log").read_text()
    result = snakemake(study, "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr
    # A dry run starts no worker.
    assert (study / "results" / "logs" / "worker.log").read_text() == worker_log


def test_new_learning_rate_reruns_only_its_jobs(study):
    config_path = study / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["training"]["learning_rates"] = [0.05, 0.2]
    changed = study / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(study, "--dry-run", "--configfile", str(changed), "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-4000:]
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["train"] == 2
    assert counts["extract"] == 2
    assert counts["align"] == 2
    assert counts["barrier"] == 2
    assert counts["dimension"] == 2
    assert counts["aggregate"] == 1
    assert counts["convergence"] == 1


def test_two_runs_from_scratch_are_identical(study, tmp_path_factory):
    again = new_study(tmp_path_factory, "again")
    result = snakemake(again)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_tables(study, again)


def test_killed_workflow_finishes_without_redoing_jobs(study, tmp_path_factory):
    workdir = new_study(tmp_path_factory, "killed")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
               "--directory", str(workdir), "--cores", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    runs = workdir / "results" / "runs" / "digits" / "depth1"
    logs = workdir / "results" / "logs"
    first_done = runs / "width8" / "lr0.05" / "alignment.parquet"

    def outputs():
        return set(runs.rglob("*.parquet")) | set(runs.rglob("params.npz"))

    def log_files():
        return set(logs.rglob("*.log"))

    deadline = time.monotonic() + 600
    while not first_done.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    # An output on disk may belong to a job that Snakemake has not yet
    # recorded as complete. With one core, the next job starts (and creates
    # its log file) only after the previous one is recorded, so every output
    # written before that is final.
    started = log_files()
    while log_files() == started and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the workflow finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (workdir / "results" / "tables" / "barriers.parquet").exists()
    limit = first_done.stat().st_mtime_ns
    finished = {path: path.stat().st_mtime_ns for path in outputs() if path.stat().st_mtime_ns <= limit}
    assert first_done in finished
    assert len(finished) >= 3
    assert snakemake(workdir, "--unlock").returncode == 0
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    assert_same_tables(study, workdir)


def test_invalid_config_stops_before_any_job(tmp_path):
    (tmp_path / "config").mkdir()
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["model"]["widths"] = [-8]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run")
    assert result.returncode != 0
    assert "-8 is less than the minimum of 1" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(SNAKEFILE)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    """Parse the job table that Snakemake prints for a dry run."""
    counts = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_missing_dataset_stops_before_any_job(tmp_path):
    (tmp_path / "config").mkdir()
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["dataset"] = "mnist"
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "dataset mnist not found: data/mnist lacks train-images-idx3-ubyte[.gz]" in output
    assert "lmcpipe data fetch mnist --to data/mnist" in output
    assert not (tmp_path / "results").exists()


def test_paper_study_plans_48_networks_and_24_pairs(tmp_path):
    # Empty files suffice: the workflow only checks that the dataset exists.
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        (data / f"{name}.gz").touch()
    result = snakemake(tmp_path, "--dry-run", "--configfile", str(ROOT / "config" / "paper.yaml"))
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    counts = job_counts(output)
    assert counts["train"] == 6
    assert counts["extract"] == 6
    assert counts["align"] == 6
    checkpoints = set(re.findall(r"results/runs/mnist/depth3/width512/lr[0-9.e-]+/seed\d+/params\.npz", output))
    assert len(checkpoints) == 48
    align_commands = [line for line in output.splitlines() if "lmcpipe align " in line]
    assert len(align_commands) == 6
    for command in align_commands:
        assert "--pairs disjoint" in command
        assert command.count("params.npz") == 8
