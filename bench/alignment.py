"""Benchmark: time and objective of weight matching on the paper's MLP shape.

Models are two independent Flax initialisations of a 784-w-w-w-10 ReLU MLP;
``wm_cov`` uses the second moments of 2048 uniform random inputs. Trained
models usually need fewer coordinate-descent passes than random ones, so
these times are on the slow side for ``wm``.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from lmcpipe.alignment import AlignOptions, align
from lmcpipe.models import init_params
from lmcpipe.statistics import activation_moments


def run(widths=(512, 2048, 8192), methods=("wm", "wm_cov"), repeats=3, max_passes=100) -> dict:
    """Return one record per method and width, and the fitted growth exponent of time."""
    records = []
    for width in widths:
        a = jax.device_get(init_params(jax.random.key(0), 784, 3, width, 10))
        b = jax.device_get(init_params(jax.random.key(1), 784, 3, width, 10))
        inputs = np.random.default_rng(0).random((2048, 784)).astype(np.float32)
        start = time.perf_counter()
        moments = activation_moments(a, inputs, b)
        statistics_seconds = time.perf_counter() - start
        for method in methods:
            times = []
            for _ in range(repeats if width <= 2048 else 1):
                result = align(method, a, b, AlignOptions(max_passes=max_passes), moments)
                times.append(result.seconds)
            records.append({
                "method": method, "width": width, "seconds": min(times),
                "objective": result.objective, "passes": result.passes,
                "converged": result.converged,
                "statistics_seconds": statistics_seconds if method == "wm_cov" else 0.0,
            })
            print(f"alignment {method} width {width}: {min(times):.3f} s, "
                  f"{result.passes} pass(es), objective {result.objective:.6g}", flush=True)
    exponents = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        if len(rows) >= 2:
            slope = np.polyfit(np.log([r["width"] for r in rows]), np.log([r["seconds"] for r in rows]), 1)[0]
            exponents[method] = float(slope)
    return {"records": records, "time_growth_exponent": exponents}
