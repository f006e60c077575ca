"""Run the Snakemake workflow end to end on the tiny study in ``.test/``."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
TABLES = ["barriers", "curves", "dimensions", "histories", "alignments", "correlations"]
PLOTS = ["barrier_vs_width", "barrier_vs_dimension", "interpolation_curves"]

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
               "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    (workdir / "config").mkdir()
    shutil.copy(ROOT / ".test" / "config.yaml", workdir / "config" / "config.yaml")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_study_writes_tables_and_plots(study):
    for name in TABLES:
        assert (study / "results" / "tables" / f"{name}.parquet").is_file()
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
    assert set(dimensions.estimator) == {"participation_ratio", "twonn"}
    assert len(dimensions) == 2 * 2 * 2


def test_jobs_fill_compilation_cache(study):
    cache = study / "results" / ".jax_cache"
    assert any(cache.glob("*-cache")), f"no compiled programs in {cache}"


def test_rerun_does_nothing(study):
    result = snakemake(study, "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


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
    assert counts["extract"] == 4
    assert counts["align"] == 2
    assert counts["barrier"] == 2
    assert counts["aggregate"] == 1


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
