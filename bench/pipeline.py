"""Benchmark: wall time of a study split into scheduling, start-up and compute.

The study runs from the repository's workflow in a temporary folder with
``snakemake --cores 2``: the default study (``config/config.yaml``) in the
full run, the tiny one (``.test/config.yaml``) cut to its first width with
``--smoke``. It runs
twice: first with an empty persistent compilation cache (``cold``), then
again with ``--forceall`` and the cache the first run filled (``warm``).

Method, per run:

* ``wall_s``: wall time of the ``snakemake`` command.
* Each job's wall time is ``endtime - starttime`` from Snakemake's metadata
  in ``.snakemake/metadata``. ``scheduling_s`` is the part of the wall time
  when no job was running: Snakemake parsing the workflow, building the DAG,
  checking files and starting the next job.
* Start-up of a job is the time its ``lmcpipe`` process spent importing
  modules plus compiling JAX programs. The jobs run with
  ``PYTHONPROFILEIMPORTTIME=1``, so Python writes every import's time to
  the job's log, and the top-level imports' cumulative times add up to the
  import time. They run with ``JAX_LOG_COMPILES=1``, so JAX logs the time
  of each tracing, lowering and XLA compilation (or cache load), and those
  add up to the compile time. Snakemake itself runs with ``python -E``,
  which ignores these variables. The interpreter's own start before the
  first import, and the time Python spends writing the import log, are not
  counted.
* Compute is the rest of each job's wall time. Where jobs overlap on the 2
  cores, the time when some job was running is divided between start-up
  and compute in proportion to their sums over the jobs.

Goal: scheduling and start-up together below 30 % of the wall time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import row

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
CORES = 2
GOAL_SHARE = 0.30

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")
_COMPILE_LINE = re.compile(
    r"Finished (?:tracing|jaxpr to MLIR module conversion|XLA compilation) .* in ([0-9.eE+-]+) sec"
)


def log_startup(text: str) -> tuple[float, float]:
    """Return ``(import_s, compile_s)`` read from one job's log.

    Only top-level imports count (a name right after the second ``|``,
    without indentation), because each one's cumulative time includes its
    nested imports.
    """
    import_us = 0
    compile_s = 0.0
    for line in text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            import_us += int(match.group(1))
            continue
        match = _COMPILE_LINE.search(line)
        if match:
            compile_s += float(match.group(1))
    return import_us / 1e6, compile_s


def read_jobs(workdir: Path) -> list[dict]:
    """Return one record per finished job from Snakemake's metadata and the job logs.

    Snakemake stores one metadata record per output file, each with its own
    start and end time. The records of one job share its log file, so a job
    spans from the earliest start to the latest end of its records.
    """
    jobs: dict[tuple, dict] = {}
    for path in (workdir / ".snakemake" / "metadata").iterdir():
        record = json.loads(path.read_text())
        if record.get("starttime") is None or record.get("endtime") is None:
            continue
        key = (record["rule"], tuple(record.get("log") or [path.name]))
        job = jobs.setdefault(key, {"rule": record["rule"], "logs": record.get("log") or [],
                                    "start": record["starttime"], "end": record["endtime"]})
        job["start"] = min(job["start"], record["starttime"])
        job["end"] = max(job["end"], record["endtime"])
    result = []
    for job in sorted(jobs.values(), key=lambda job: job["start"]):
        import_s = compile_s = 0.0
        for log_path in job["logs"]:
            imports, compiles = log_startup((workdir / log_path).read_text(errors="replace"))
            import_s += imports
            compile_s += compiles
        result.append({
            "rule": job["rule"], "start": job["start"], "end": job["end"],
            "wall_s": job["end"] - job["start"], "import_s": import_s, "compile_s": compile_s,
        })
    return result


def busy_seconds(jobs: list[dict]) -> float:
    """Return the length of the union of the jobs' ``[start, end]`` intervals."""
    total = 0.0
    current_start = current_end = None
    for job in sorted(jobs, key=lambda job: job["start"]):
        if current_end is None or job["start"] > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = job["start"], job["end"]
        else:
            current_end = max(current_end, job["end"])
    if current_end is not None:
        total += current_end - current_start
    return total


def split_run(wall_s: float, jobs: list[dict]) -> dict:
    """Split a study's wall time into scheduling, start-up and compute (see the module docstring)."""
    busy = busy_seconds(jobs)
    job_s = sum(job["wall_s"] for job in jobs)
    import_s = sum(job["import_s"] for job in jobs)
    compile_s = sum(job["compile_s"] for job in jobs)
    startup_fraction = (import_s + compile_s) / job_s if job_s > 0 else 0.0
    scheduling_s = max(wall_s - busy, 0.0)
    startup_wall_s = busy * startup_fraction
    by_rule = {}
    for job in jobs:
        entry = by_rule.setdefault(job["rule"], {"jobs": 0, "wall_s": 0.0, "import_s": 0.0, "compile_s": 0.0})
        entry["jobs"] += 1
        for name in ("wall_s", "import_s", "compile_s"):
            entry[name] += job[name]
    overhead_share = (scheduling_s + startup_wall_s) / wall_s if wall_s > 0 else 0.0
    return {
        "wall_s": wall_s,
        "jobs": len(jobs),
        "busy_s": busy,
        "scheduling_s": scheduling_s,
        "job_seconds": job_s,
        "import_seconds": import_s,
        "compile_seconds": compile_s,
        "startup_wall_s": startup_wall_s,
        "compute_wall_s": busy - startup_wall_s,
        "overhead_share": overhead_share,
        "by_rule": by_rule,
    }


def _snakemake(workdir: Path, *args: str) -> float:
    env = dict(os.environ)
    env.pop("LMCPIPE_COMPILATION_CACHE", None)  # the rules' default cache folder applies
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    env["JAX_LOG_COMPILES"] = "1"
    command = [sys.executable, "-E", "-m", "snakemake", "--snakefile", str(SNAKEFILE),
               "--directory", str(workdir), "--cores", str(CORES), *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"snakemake failed with status {result.returncode}:\n{result.stderr[-4000:]}")
    return wall


def run(smoke: bool = False) -> dict:
    """Run the study cold and warm in a temporary folder; return the section's results."""
    config_path = ROOT / (".test/config.yaml" if smoke else "config/config.yaml")
    study = yaml.safe_load(config_path.read_text())
    if smoke:
        # One setting of the tiny study keeps the smoke run short.
        study["model"]["widths"] = study["model"]["widths"][:1]
    workdir = Path(tempfile.mkdtemp(prefix="lmcpipe-bench-study-"))
    try:
        (workdir / "config").mkdir()
        (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(study))
        runs = {}
        for name, args in (("cold", ()), ("warm", ("--forceall",))):
            wall = _snakemake(workdir, *args)
            runs[name] = split_run(wall, read_jobs(workdir))
            log.info("study %s: %s", name, {key: value for key, value in runs[name].items() if key != "by_rule"})
        cache_files = sum(1 for _ in (workdir / "results" / ".jax_cache").glob("*-cache"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cold, warm = runs["cold"], runs["warm"]
    rows = [
        row(f"study {config_path.relative_to(ROOT)} (widths {study['model']['widths']}), "
            f"{cold['jobs']} jobs, --cores {CORES}",
            f"cold cache {cold['wall_s']:.1f} s, warm cache {warm['wall_s']:.1f} s"),
    ]
    for name, split in runs.items():
        rows.append(row(
            f"{name} cache: scheduling / start-up / compute (wall)",
            f"{split['scheduling_s']:.1f} / {split['startup_wall_s']:.1f} / {split['compute_wall_s']:.1f} s",
        ))
        rows.append(row(
            f"{name} cache: job time in imports / compilation (sum over jobs)",
            f"{split['import_seconds']:.1f} / {split['compile_seconds']:.1f} of {split['job_seconds']:.1f} s",
        ))
        rows.append(row(
            f"{name} cache: scheduling + start-up share of wall time",
            f"{100 * split['overhead_share']:.0f} %", f"< {100 * GOAL_SHARE:.0f} %",
            split["overhead_share"] < GOAL_SHARE,
        ))
    return {
        "config": str(config_path.relative_to(ROOT)),
        "widths": study["model"]["widths"],
        "cores": CORES,
        "runs": runs,
        "cache_entries": cache_files,
        "goal_share": GOAL_SHARE,
        "goal_met": cold["overhead_share"] < GOAL_SHARE,
        "rows": rows,
    }
