"""Benchmark: peak resident memory of training and of the barrier step against width.

Each measurement runs in its own Python process, which reports its peak
resident set size when done. The figure is ``VmHWM`` from
``/proc/self/status``, the high-water mark of the process's own memory map.
``ru_maxrss`` of ``getrusage`` is recorded beside it but not used: Linux
keeps the parent's peak in it across ``fork`` and ``exec``, so a child of
this (large) benchmark process reports at least the parent's size.

* ``baseline``: imports lmcpipe's training and barrier modules and runs one
  tiny jitted program, the floor under every other figure;
* ``training``: :func:`lmcpipe.training.train_seeds`, 2 seeds, one epoch of a
  784-w-w-w-10 MLP at batch 500 on 2000 random examples (500 test
  examples), with the default ``vectorize="auto"``;
* ``barrier``: :func:`lmcpipe.barriers.interpolation_curve` at 25 values of
  t between two such MLPs over 2048 random examples, one chunk of the
  curve's default size. More examples add their own inputs only (a padded
  host copy and a device copy, 784 float32 each), because the curve works
  through them one chunk at a time.

The growth exponent is fitted to the memory above the baseline against
width. Run as ``python -m bench.memory --child KIND --width W`` to measure
one process by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import row

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("training", "barrier")
FULL_WIDTHS = (128, 512, 2048)
SMOKE_WIDTHS = (16, 32)


def _sizes(smoke: bool) -> dict:
    if smoke:
        return {"batch": 100, "n_train": 200, "n_test": 100, "curve_examples": 256}
    return {"batch": 500, "n_train": 2000, "n_test": 500, "curve_examples": 2048}


def _measure_in_child(kind: str, width: int, smoke: bool) -> None:
    """Run one measurement in this process and print its peak RSS as JSON."""
    import jax
    import jax.numpy as jnp

    from bench import workloads
    from lmcpipe.barriers import interpolation_curve, t_grid
    from lmcpipe.spec import TrainSpec
    from lmcpipe.training import train_seeds

    sizes = _sizes(smoke)
    if kind == "baseline":
        jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
    elif kind == "training":
        steps = sizes["n_train"] // sizes["batch"]
        spec = TrainSpec("random", workloads.DEPTH, width, lr=0.01, epochs=1,
                         batch_size=sizes["batch"], warmup_steps=steps - 1)
        train_seeds(spec, [0, 1], workloads.random_dataset(sizes["n_train"], sizes["n_test"]))
    elif kind == "barrier":
        x, y = workloads.random_inputs(sizes["curve_examples"])
        interpolation_curve(workloads.mlp(0, width), workloads.mlp(1, width), x, y, t_grid(25))
    else:
        raise ValueError(f"unknown measurement {kind!r}; expected baseline, {' or '.join(KINDS)}")
    # Linux reports both figures in KiB.
    print(json.dumps({
        "max_rss_mib": _vm_hwm_kib() / 1024,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM line; peak memory needs Linux")


def _child(kind: str, width: int, smoke: bool) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", kind, "--width", str(width)]
    if smoke:
        command.append("--smoke")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement {kind} at width {width} failed:\n{result.stderr[-4000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    log.info("%s at width %d: %.0f MiB peak RSS, %.1f s", kind, width, measured["max_rss_mib"], wall)
    return {"kind": kind, "width": width, **measured, "wall_s": wall}


def run(smoke: bool = False) -> dict:
    """Measure the baseline and every kind at every width; return the section's results."""
    widths = SMOKE_WIDTHS if smoke else FULL_WIDTHS
    baseline = _child("baseline", 0, smoke)["max_rss_mib"]
    records = [_child(kind, width, smoke) for kind in KINDS for width in widths]
    exponents = {}
    for kind in KINDS:
        points = [(r["width"], r["max_rss_mib"] - baseline) for r in records if r["kind"] == kind]
        if len(points) >= 2 and all(extra > 0 for _, extra in points):
            exponents[kind] = float(np.polyfit(np.log([w for w, _ in points]),
                                               np.log([extra for _, extra in points]), 1)[0])
    rows = [row("baseline (imports and one tiny program)", f"{baseline:.0f} MiB")]
    for kind in KINDS:
        values = ", ".join(f"{r['max_rss_mib']:.0f}" for r in records if r["kind"] == kind)
        rows.append(row(f"{kind} peak RSS at widths {', '.join(map(str, widths))}", f"{values} MiB"))
        if kind in exponents:
            rows.append(row(f"{kind}: RSS above baseline ~ width^k", f"k = {exponents[kind]:.2f}"))
    return {
        "sizes": _sizes(smoke),
        "widths": list(widths),
        "baseline_mib": baseline,
        "records": records,
        "growth_exponent_above_baseline": exponents,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure one process's peak resident memory.")
    parser.add_argument("--child", required=True, choices=("baseline",) + KINDS,
                        help="what the process runs before it reports its peak RSS")
    parser.add_argument("--width", type=int, default=0, help="hidden width of the MLPs")
    parser.add_argument("--smoke", action="store_true", help="use the smoke sizes")
    args = parser.parse_args(argv)
    _measure_in_child(args.child, args.width, args.smoke)


if __name__ == "__main__":
    main()
