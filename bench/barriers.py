"""Benchmark: the interpolation curve against plain forward passes.

:func:`lmcpipe.barriers.interpolation_curve` evaluates the mean loss and
accuracy of 25 interpolated reference MLPs over 10 000 random test
examples, in one compiled program. The reference figure is 25 calls of a
jitted forward pass of one fixed model over the same examples, already on
the device, that sums the same per-example loss and correct predictions.
The curve's time includes what the function does per call: padding the
examples to whole chunks and copying them to the device.

Recompilation: the jitted function behind the curve is
``lmcpipe.barriers._curve_sums``. Its cache size is read after the first
pair, after a second pair, and after the first pair with other values of t.
A size that grows means a pair or a grid of t compiled a new program.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

import lmcpipe.barriers
from bench import workloads
from bench.report import row
from bench.timing import CompileTimer, time_repeats
from lmcpipe.barriers import interpolation_curve, t_grid
from lmcpipe.models import loss_and_correct

log = logging.getLogger(__name__)

GOAL_RATIO = 1.3
POINTS = 25


def _cache_size() -> int | None:
    """Return the number of programs compiled for ``_curve_sums``, or None if it is not available."""
    curve_sums = getattr(lmcpipe.barriers, "_curve_sums", None)
    size = getattr(curve_sums, "cache_size", None)
    return size() if size is not None else None


@jax.jit
def _forward_sums(params, x, y):
    loss, correct = loss_and_correct(params, x, y)
    return jnp.sum(loss), jnp.sum(correct)


def run(smoke: bool = False) -> dict:
    """Time the curve and the forward passes; return the section's results."""
    width, n, repeats = (32, 500, 2) if smoke else (workloads.WIDTH, 10_000, 3)
    x, y = workloads.random_inputs(n, seed=2)
    pairs = [(workloads.mlp(0, width), workloads.mlp(1, width)),
             (workloads.mlp(2, width), workloads.mlp(3, width))]
    ts = t_grid(POINTS)

    cache_sizes = {"before": _cache_size()}
    with CompileTimer() as compile_timer:
        interpolation_curve(*pairs[0], x, y, ts)
    cache_sizes["after_first_pair"] = _cache_size()
    curve = time_repeats(lambda: interpolation_curve(*pairs[0], x, y, ts), repeats, warmup=0)
    interpolation_curve(*pairs[1], x, y, ts)
    cache_sizes["after_second_pair"] = _cache_size()
    interpolation_curve(*pairs[0], x, y, ts**2)
    cache_sizes["after_other_t_values"] = _cache_size()
    recompiled = None
    if cache_sizes["after_first_pair"] is not None:
        recompiled = cache_sizes["after_other_t_values"] > cache_sizes["after_first_pair"]

    fixed = pairs[0][0]
    x_device, y_device = jax.device_put(x), jax.device_put(y)

    def forward_passes():
        for _ in range(POINTS):
            sums = _forward_sums(fixed, x_device, y_device)
        jax.block_until_ready(sums)

    forward = time_repeats(forward_passes, repeats)
    ratio = curve["median_s"] / forward["median_s"]
    # Matmul FLOPs of the 25 forward passes. The curve also computes its
    # padding up to a whole chunk of examples, which is not counted.
    flops = POINTS * workloads.forward_flops(n, workloads.layer_shapes(width))
    log.info("curve %.3f s, %d forward passes %.3f s, ratio %.2f; cache sizes %s",
             curve["median_s"], POINTS, forward["median_s"], ratio, cache_sizes)
    model = workloads.model_name(width)
    return {
        "model": model,
        "examples": n,
        "points": POINTS,
        "curve": curve,
        "curve_first_call_compile_s": compile_timer.seconds,
        "forward_passes": forward,
        "flops": flops,
        "curve_flops_per_s": flops / curve["median_s"],
        "forward_passes_flops_per_s": flops / forward["median_s"],
        "ratio": ratio,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
        "cache_sizes": cache_sizes,
        "recompiled": recompiled,
        "rows": [
            row(f"curve, {POINTS} t, {n} examples, {model}", f"{curve['median_s']:.3f} s"),
            row(f"{POINTS} jitted forward passes, same examples", f"{forward['median_s']:.3f} s"),
            row("FLOP/s, curve / forward passes",
                f"{flops / curve['median_s'] / 1e9:.1f} / {flops / forward['median_s'] / 1e9:.1f} GFLOP/s"),
            row("curve / forward passes", f"{ratio:.2f}x", f"<= {GOAL_RATIO}x", ratio <= GOAL_RATIO),
            row("curve compile (first call)", f"{compile_timer.seconds:.2f} s"),
            row("_curve_sums cache size: first pair, second pair, other t",
                f"{cache_sizes['after_first_pair']}, {cache_sizes['after_second_pair']}, "
                f"{cache_sizes['after_other_t_values']}",
                "no growth", None if recompiled is None else not recompiled),
        ],
    }
