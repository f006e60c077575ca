"""The benchmark suite: its helpers, and a smoke run of ``python -m bench``.

The smoke run checks that every benchmark runs and reports; it times
nothing against a limit.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bench import workloads
from bench.pipeline import busy_seconds, log_startup, read_jobs, split_run
from bench.report import markdown, row
from bench.training import _step_matmuls

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["training", "seeds", "barrier", "alignment", "pipeline", "memory"]


def test_step_flops_match_matmul_list():
    shapes = workloads.layer_shapes(512)
    matmuls = _step_matmuls(500, shapes)
    total = sum(2 * lhs[0] * lhs[1] * rhs[1] for lhs, rhs in matmuls)
    assert total == workloads.step_flops(500, shapes)
    assert total == 6 * 500 * (784 * 512 + 2 * 512 * 512 + 512 * 10) - 2 * 500 * 784 * 512


def test_forward_flops_of_reference_model():
    assert workloads.forward_flops(500, workloads.layer_shapes()) == 2 * 500 * 930_816


def test_log_startup_sums_top_level_imports_and_compiles():
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |   _io",
        "import time:       200 |        300 | encodings",
        "2026-01-01 INFO lmcpipe: lmcpipe train: started",
        "import time:        50 |       1500 | jax",
        "2026-01-01 INFO lmcpipe.training: training 2 seed(s)",
        "2026-01-01 WARNING jax._src.dispatch: Finished tracing epoch for jit in 0.25 sec",
        "2026-01-01 WARNING jax._src.dispatch: Finished jaxpr to MLIR module conversion jit(epoch) in 0.5 sec",
        "2026-01-01 WARNING jax._src.dispatch: Finished XLA compilation of jit(epoch) in 1.25 sec",
        "2026-01-01 INFO lmcpipe.programs: Stored program training.epoch in 0.125 sec",
        "2026-01-01 INFO lmcpipe.programs: Loaded stored program training.evaluate in 0.0625 sec",
        "2026-01-01 INFO lmcpipe: lmcpipe train: finished in 3.500 s",
    ])
    times = log_startup(log)
    assert times["import_s"] == pytest.approx(1800e-6)
    assert times["step_import_s"] == pytest.approx(1500e-6)
    assert times["compile_s"] == pytest.approx(2.1875)
    assert times["step_s"] == pytest.approx(3.5)
    assert log_startup("import time:       200 |        300 | encodings")["step_s"] is None


def test_read_jobs_splits_start_up_from_compute(tmp_path):
    metadata = tmp_path / ".snakemake" / "metadata"
    metadata.mkdir(parents=True)
    for name, output in enumerate(["a.parquet", "b.parquet"]):
        (metadata / str(name)).write_text(json.dumps({
            "rule": "align", "log": ["logs/align.log"], "starttime": 10.0 + name, "endtime": 15.0,
        }))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "align.log").write_text("\n".join([
        "import time:        50 |     500000 | lmcpipe.cli",
        "x INFO lmcpipe: lmcpipe align: started",
        "import time:        50 |    1000000 | lmcpipe.alignment",
        "x WARNING jax._src.dispatch: Finished XLA compilation of jit(f) in 0.5 sec",
        "x INFO lmcpipe: lmcpipe align: finished in 3.000 s",
    ]))
    (job,) = read_jobs(tmp_path)
    assert job["wall_s"] == pytest.approx(5.0)
    assert job["compute_s"] == pytest.approx(1.5)
    assert job["startup_s"] == pytest.approx(3.5)
    assert job["import_s"] == pytest.approx(1.5)


def test_busy_seconds_merges_overlaps():
    jobs = [{"start": 0.0, "end": 2.0}, {"start": 1.0, "end": 3.0}, {"start": 5.0, "end": 6.0}]
    assert busy_seconds(jobs) == pytest.approx(4.0)
    assert busy_seconds([]) == 0.0


def test_split_run_shares():
    jobs = [
        {"rule": "train", "start": 0.0, "end": 4.0, "wall_s": 4.0, "import_s": 1.0, "compile_s": 1.0,
         "startup_s": 2.0},
        {"rule": "plot", "start": 6.0, "end": 8.0, "wall_s": 2.0, "import_s": 1.0, "compile_s": 0.0,
         "startup_s": 1.0},
    ]
    split = split_run(10.0, jobs)
    assert split["scheduling_s"] == pytest.approx(4.0)
    assert split["startup_wall_s"] == pytest.approx(3.0)
    assert split["compute_wall_s"] == pytest.approx(3.0)
    assert split["overhead_share"] == pytest.approx(0.7)
    assert split["by_rule"]["train"]["jobs"] == 1


def test_markdown_marks_goals_and_failures():
    results = {
        "run": {"command": "python -m bench", "date": "2026-01-01T00:00:00+00:00", "smoke": False},
        "machine": {"cpu_model": "cpu", "usable_cores": 2, "jax_version": jax.__version__,
                    "jax_backend": "cpu", "load_average": [0.1, 0.1, 0.1]},
        "sections": {
            "barrier": {"rows": [row("curve / forward passes", "1.10x", "<= 1.3x", True)]},
            "memory": {"error": "RuntimeError: failed"},
        },
    }
    text = markdown(results)
    assert "| barrier | curve / forward passes | 1.10x | <= 1.3x | yes |" in text
    assert "| memory | failed | RuntimeError: failed | | |" in text


@pytest.mark.workflow
def test_smoke_run_reports_every_section(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--output", str(output)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(output.read_text())
    assert results["run"]["smoke"] is True
    for key in ["cpu_model", "usable_cores", "jax_backend", "jax_version"]:
        assert results["machine"][key], key
    assert list(results["sections"]) == SECTIONS
    for name, section in results["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"
        assert section["rows"], name
    assert results["sections"]["barrier"]["recompiled"] is False
    assert results["sections"]["training"]["donated_buffers_deleted"] is True
    assert "| training |" in result.stdout
