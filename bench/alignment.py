"""Benchmark: time and objective of weight matching against width.

Models are two independent Flax initialisations of a 784-w-w-w-10 ReLU MLP;
``wm_cov`` uses the second moments of 2048 uniform random inputs, whose
computation is timed separately (``statistics_seconds``). Trained models
usually need fewer coordinate-descent passes than random ones, so these
times are on the slow side for ``wm``.

A pass of ``wm`` solves one dense linear assignment per hidden layer after
building its score matrix, so at width 8192 one pass takes minutes on two
cores. The full run therefore caps ``wm`` at one pass at that width: its
time, pass count and objective there are those of the capped run, not of a
converged one. ``wm_cov`` always makes one sweep over the layers. The
growth exponent is fitted to the time per pass (per sweep for ``wm_cov``),
the one figure that is comparable across capped and uncapped widths.
"""

from __future__ import annotations

import logging
import time
import warnings

import jax
import numpy as np

from bench import workloads
from bench.report import row
from lmcpipe.alignment import AlignOptions, PassLimitWarning, align
from lmcpipe.statistics import activation_moments

log = logging.getLogger(__name__)

METHODS = ("wm", "wm_cov")
# (width, repeats, max_passes): repeats keep the fastest time.
FULL_PLAN = ((512, 3, 100), (2048, 1, 100), (8192, 1, 1))
SMOKE_PLAN = ((16, 1, 100), (32, 1, 100), (64, 1, 100))


def run_widths(plan, methods=METHODS, examples: int = 2048) -> dict:
    """Return one record per method and width, and the fitted growth exponent of time per pass."""
    records = []
    for width, repeats, max_passes in plan:
        a = jax.device_get(workloads.mlp(0, width))
        b = jax.device_get(workloads.mlp(1, width))
        inputs, _ = workloads.random_inputs(examples)
        moments = None
        statistics_seconds = 0.0
        if any(method != "wm" for method in methods):
            start = time.perf_counter()
            moments = activation_moments(a, inputs, b)
            statistics_seconds = time.perf_counter() - start
        for method in methods:
            times = []
            for _ in range(repeats):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PassLimitWarning)
                    result = align(method, a, b, AlignOptions(max_passes=max_passes), moments)
                times.append(result.seconds)
            seconds = min(times)
            records.append({
                "method": method,
                "width": width,
                "seconds": seconds,
                "passes": result.passes,
                "seconds_per_pass": seconds / max(result.passes, 1),
                "max_passes": max_passes,
                "converged": result.converged,
                "objective": result.objective,
                "statistics_seconds": statistics_seconds if method != "wm" else 0.0,
            })
            log.info("alignment %s width %d: %.3f s, %d pass(es)%s, objective %.6g",
                     method, width, seconds, result.passes,
                     "" if result.converged else " (pass limit reached)", result.objective)
    exponents = {}
    for method in methods:
        rows = [record for record in records if record["method"] == method]
        if len(rows) >= 2:
            widths = np.log([record["width"] for record in rows])
            per_pass = np.log([record["seconds_per_pass"] for record in rows])
            exponents[method] = float(np.polyfit(widths, per_pass, 1)[0])
    return {"records": records, "time_per_pass_growth_exponent": exponents}


def run(smoke: bool = False) -> dict:
    """Align random reference-shaped MLPs at every width of the plan; return the section's results."""
    plan = SMOKE_PLAN if smoke else FULL_PLAN
    result = run_widths(plan, examples=256 if smoke else 2048)
    rows = []
    for record in result["records"]:
        capped = "" if record["converged"] else f", capped at {record['max_passes']} pass(es)"
        rows.append(row(
            f"{record['method']} at width {record['width']}",
            f"{record['seconds']:.3f} s, {record['passes']} pass(es){capped}, "
            f"{record['seconds_per_pass']:.3f} s/pass, objective {record['objective']:.6g}",
        ))
    for method, exponent in result["time_per_pass_growth_exponent"].items():
        rows.append(row(f"{method}: time per pass ~ width^k", f"k = {exponent:.2f}"))
    return {"plan": [list(entry) for entry in plan], **result, "rows": rows}
