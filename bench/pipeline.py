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
* Compute of a job is the time its step ran, from the ``lmcpipe X: started``
  and ``lmcpipe X: finished in S s`` lines of its log, less the imports and
  JAX compilations inside the step. The jobs run with
  ``PYTHONPROFILEIMPORTTIME=1``, so Python logs each import's time (the
  top-level imports' cumulative times add up to the import time), and with
  ``JAX_LOG_COMPILES=1``, so JAX logs the time of each tracing, lowering and
  XLA compilation (or cache load), and lmcpipe the time of each stored
  program it loads or stores (lmcpipe.programs). Snakemake itself runs with ``python -E``,
  which ignores these variables.
* Start-up of a job is the rest of its wall time: the shell, the
  interpreter's start, imports, handing the command to the worker and
  compilation.
* Where jobs overlap on the 2 cores, the time when some job was running is
  divided between start-up and compute in proportion to their sums over the
  jobs.

The study runs with the worker (``runtime.worker: true``, the default) cold
and warm, then warm once more with the worker off, for comparison. The
worker's own imports run while the first jobs wait for it, so they are part
of those jobs' start-up.

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
    r"(?:Finished (?:tracing|jaxpr to MLIR module conversion|XLA compilation) .*"
    r"|(?:Loaded stored|Stored) program \S+) in ([0-9.eE+-]+) sec"
)


_STARTED_LINE = re.compile(r"lmcpipe [a-z ]+: started$")
_FINISHED_LINE = re.compile(r"lmcpipe [a-z ]+: finished in ([0-9.]+) s$")


def log_startup(text: str) -> dict:
    """Return the import, compile and step times read from one job's log.

    Only top-level imports count (a name right after the second ``|``,
    without indentation), because each one's cumulative time includes its
    nested imports. ``step_import_s`` counts those after the step started.

    Returns:
        ``import_s``, ``step_import_s``, ``compile_s`` and ``step_s`` (None
        when the log has no finished line).
    """
    import_us = step_import_us = 0
    compile_s = 0.0
    step_s = None
    in_step = False
    for line in text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            import_us += int(match.group(1))
            if in_step:
                step_import_us += int(match.group(1))
            continue
        match = _COMPILE_LINE.search(line)
        if match:
            compile_s += float(match.group(1))
            continue
        if _STARTED_LINE.search(line):
            in_step = True
            continue
        match = _FINISHED_LINE.search(line)
        if match:
            step_s = (step_s or 0.0) + float(match.group(1))
            in_step = False
    return {"import_s": import_us / 1e6, "step_import_s": step_import_us / 1e6,
            "compile_s": compile_s, "step_s": step_s}


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
        import_s = step_import_s = compile_s = step_s = 0.0
        for log_path in job["logs"]:
            times = log_startup((workdir / log_path).read_text(errors="replace"))
            if times["step_s"] is None:
                raise RuntimeError(f"{log_path}: no 'finished' line; cannot time the step")
            import_s += times["import_s"]
            step_import_s += times["step_import_s"]
            compile_s += times["compile_s"]
            step_s += times["step_s"]
        wall_s = job["end"] - job["start"]
        compute_s = min(max(step_s - step_import_s - compile_s, 0.0), wall_s)
        result.append({
            "rule": job["rule"], "start": job["start"], "end": job["end"], "wall_s": wall_s,
            "import_s": import_s, "compile_s": compile_s, "compute_s": compute_s,
            "startup_s": wall_s - compute_s,
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
    startup_s = sum(job["startup_s"] for job in jobs)
    startup_fraction = startup_s / job_s if job_s > 0 else 0.0
    scheduling_s = max(wall_s - busy, 0.0)
    startup_wall_s = busy * startup_fraction
    by_rule = {}
    for job in jobs:
        entry = by_rule.setdefault(job["rule"], {"jobs": 0, "wall_s": 0.0, "import_s": 0.0,
                                                 "compile_s": 0.0, "startup_s": 0.0})
        entry["jobs"] += 1
        for name in ("wall_s", "import_s", "compile_s", "startup_s"):
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
        "startup_seconds": startup_s,
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


RUNS = (
    ("cold", (), True),
    ("warm", ("--forceall",), True),
    ("warm, worker off", ("--forceall", "--configfile", "{workdir}/config/config.yaml",
                          "{workdir}/config/worker_off.yaml"), False),
)


def _worker_imports(workdir: Path) -> float | None:
    path = workdir / "results" / "logs" / "worker.log"
    if not path.exists():
        return None
    # The worker imports its modules in two groups (lmcpipe.worker.PRELOAD_FIRST, PRELOAD_LATER).
    times = re.findall(r"imported \d+ (?:more )?modules in ([0-9.]+) s", path.read_text())
    return sum(map(float, times)) if times else None


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
        (workdir / "config" / "worker_off.yaml").write_text(yaml.safe_dump({"runtime": {"worker": False}}))
        runs = {}
        for name, args, worker in RUNS:
            log_path = workdir / "results" / "logs" / "worker.log"
            log_path.unlink(missing_ok=True)
            wall = _snakemake(workdir, *(arg.format(workdir=workdir) for arg in args))
            runs[name] = split_run(wall, read_jobs(workdir))
            runs[name]["worker"] = worker
            runs[name]["worker_import_s"] = _worker_imports(workdir)
            if worker and runs[name]["worker_import_s"] is None:
                raise RuntimeError("the worker did not start; see results/logs/worker.log")
            log.info("study %s: %s", name, runs[name])
        cache = workdir / "results" / ".jax_cache"
        cache_files = sum(1 for _ in cache.glob("*-cache"))
        stored_programs = sum(1 for _ in cache.glob("lmcpipe-programs/*.pkl"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cold = runs["cold"]
    rows = [
        row(f"study {config_path.relative_to(ROOT)} (widths {study['model']['widths']}), "
            f"{cold['jobs']} jobs, --cores {CORES}",
            ", ".join(f"{name} {split['wall_s']:.1f} s" for name, split in runs.items())),
    ]
    for name, split in runs.items():
        rows.append(row(
            f"{name}: scheduling / start-up / compute (wall)",
            f"{split['scheduling_s']:.1f} / {split['startup_wall_s']:.1f} / {split['compute_wall_s']:.1f} s",
        ))
        rows.append(row(
            f"{name}: job time in start-up (imports, compilation) (sum over jobs)",
            f"{split['startup_seconds']:.1f} ({split['import_seconds']:.1f}, "
            f"{split['compile_seconds']:.1f}) of {split['job_seconds']:.1f} s",
        ))
        rows.append(row(
            f"{name}: scheduling + start-up share of wall time",
            f"{100 * split['overhead_share']:.0f} %", f"< {100 * GOAL_SHARE:.0f} %",
            split["overhead_share"] < GOAL_SHARE,
        ))
    return {
        "config": str(config_path.relative_to(ROOT)),
        "widths": study["model"]["widths"],
        "cores": CORES,
        "runs": runs,
        "cache_entries": cache_files,
        "stored_programs": stored_programs,
        "goal_share": GOAL_SHARE,
        "goal_met": all(split["overhead_share"] < GOAL_SHARE
                        for split in runs.values() if split["worker"]),
        "rows": rows,
    }
