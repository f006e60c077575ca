"""Benchmark: K seeds in one vmapped program against K seeds in sequence.

Both paths are :func:`lmcpipe.training.train_seeds` for one epoch of the
reference MLP at batch 500 on random data, with ``vectorize=True`` and
``vectorize=False``. A call compiles its programs afresh (new closures), so
each call's compile time is measured with JAX's compile events
(:class:`bench.timing.CompileTimer`) and its run time is the wall time less
that. The run includes what one epoch of lmcpipe costs besides the SGD
steps: moving the data to the device, initialisation, and the evaluation on
the train and test sets before and after the epoch. Calls alternate between
the two paths so that a change in machine load hits both.

JAX warnings about donated buffers that could not be used are counted: none
means the epoch program reuses the parameter and optimizer buffers in place.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings

import jax

from bench import workloads
from bench.report import row
from bench.timing import CompileTimer
from lmcpipe.spec import TrainSpec
from lmcpipe.training import resolve_vectorize, train_seeds

log = logging.getLogger(__name__)

PATHS = {"vmap": True, "loop": False}


def _time_call(spec, seeds, dataset, vectorize) -> dict:
    with warnings.catch_warnings(record=True) as caught, CompileTimer() as compile_timer:
        warnings.simplefilter("always")
        start = time.perf_counter()
        results = train_seeds(spec, seeds, dataset, vectorize=vectorize)
        wall = time.perf_counter() - start
    if any(result.status != "ok" for result in results):
        raise RuntimeError("a benchmark seed diverged; lower the benchmark's learning rate")
    donation_warnings = sum("donated" in str(warning.message) for warning in caught)
    return {
        "wall_s": wall,
        "compile_s": compile_timer.seconds,
        "compilations": compile_timer.count,
        "run_s": wall - compile_timer.seconds,
        "donation_warnings": donation_warnings,
    }


def _time_paths(spec, seeds, dataset, repeats: int) -> dict[str, list[dict]]:
    """Time ``repeats`` calls of each path, alternating which path goes first."""
    # Pay first-use costs outside the timed calls (Python-side caches of Flax,
    # Optax and JAX, small programs that later calls reuse) on a tiny problem.
    tiny = TrainSpec("random", workloads.DEPTH, 8, lr=0.01, epochs=1, batch_size=10, warmup_steps=0)
    for vectorize in PATHS.values():
        train_seeds(tiny, seeds, workloads.random_dataset(20, 10), vectorize=vectorize)

    calls = {name: [] for name in PATHS}
    for repeat in range(repeats):
        order = list(PATHS) if repeat % 2 == 0 else list(reversed(PATHS))
        for name in order:
            calls[name].append(_time_call(spec, seeds, dataset, PATHS[name]))
            log.info("%d seeds with %s: %s", len(seeds), name, calls[name][-1])
    return calls


def run(smoke: bool = False) -> dict:
    """Train K seeds both ways and return the section's results."""
    if smoke:
        k, width, batch, n_train, n_test, repeats = 2, 32, 100, 500, 100, 1
    else:
        k, width, batch, n_train, n_test, repeats = 4, workloads.WIDTH, workloads.BATCH, 10_000, 1_000, 2
    steps = n_train // batch
    spec = TrainSpec("random", workloads.DEPTH, width, lr=0.01, epochs=1, batch_size=batch,
                     warmup_steps=min(10, steps - 1))
    calls = _time_paths(spec, list(range(k)), workloads.random_dataset(n_train, n_test), repeats)

    shapes = workloads.layer_shapes(width)
    # Per seed: the SGD steps, and the evaluation on both splits before and after the epoch.
    flops = k * (steps * workloads.step_flops(batch, shapes)
                 + 2 * workloads.forward_flops(n_train + n_test, shapes))
    paths = {}
    for name, samples in calls.items():
        run_s = statistics.median(sample["run_s"] for sample in samples)
        paths[name] = {
            "calls": samples,
            "run_s": run_s,
            "compile_s": statistics.median(sample["compile_s"] for sample in samples),
            "flops_per_s": flops / run_s,
        }

    faster = min(paths, key=lambda name: paths[name]["run_s"])
    auto = "vmap" if resolve_vectorize("auto") else "loop"
    speedup = paths["loop"]["run_s"] / paths["vmap"]["run_s"]
    donation_warnings = sum(sample["donation_warnings"] for samples in calls.values() for sample in samples)
    vmap, loop = paths["vmap"], paths["loop"]
    return {
        "backend": jax.default_backend(),
        "seeds": k,
        "width": width,
        "batch": batch,
        "n_train": n_train,
        "n_test": n_test,
        "steps_per_seed": steps,
        "flops": flops,
        "paths": paths,
        "vmap_speedup": speedup,
        "faster": faster,
        "auto_resolves_to": auto,
        "auto_picks_faster": auto == faster,
        "donation_warnings": donation_warnings,
        "rows": [
            row(f"{k} seeds x 1 epoch ({steps} steps of {batch}), vmap: run", f"{vmap['run_s']:.2f} s"),
            row(f"{k} seeds x 1 epoch, loop: run", f"{loop['run_s']:.2f} s"),
            row("compile, vmap / loop", f"{vmap['compile_s']:.2f} s / {loop['compile_s']:.2f} s"),
            row("loop run / vmap run", f"{speedup:.2f}x"),
            row(f"vectorize='auto' on {jax.default_backend()}", auto,
                f"the faster path ({faster})", auto == faster),
            row("training FLOP/s, vmap / loop",
                f"{vmap['flops_per_s'] / 1e9:.1f} / {loop['flops_per_s'] / 1e9:.1f} GFLOP/s"),
            row("donation warnings", str(donation_warnings)),
        ],
    }
