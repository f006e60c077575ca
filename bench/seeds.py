"""Benchmark: K seeds in one vmapped program against K seeds in sequence.

For each workload in :data:`FULL_WORKLOADS`, from the digits MLP of the
default study to the 784-512-512-512-10 reference model, both paths are
:func:`lmcpipe.training.train_seeds` on random data with ``vectorize=True``
and ``vectorize=False``. JAX's caches are cleared before every call, so each
call compiles its programs as a fresh ``lmcpipe train`` job does. Its compile
time is measured with JAX's compile events
(:class:`bench.timing.CompileTimer`) and its run time is the wall time less
that. The run includes what training costs besides the SGD steps: moving the
data to the device, initialisation, and the evaluation on the train and test
sets after every epoch. Calls alternate between the two paths, and which
path goes first alternates between repeats, so that a change in machine load
hits both.

Per workload the section reports the faster path by median run time, whether
the two medians differ by less than the spread (max - min) of either path's
samples, and whether ``vectorize="auto"`` picks the faster path. The goal is
met when ``auto`` picks the faster path at every workload where the
difference exceeds that spread.

JAX warnings about donated buffers that could not be used are counted: none
means the epoch programs reuse the parameter and optimizer buffers in place.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
import warnings

import jax
import numpy as np

from bench import workloads
from bench.report import row
from bench.timing import CompileTimer
from lmcpipe import training
from lmcpipe.data import Dataset
from lmcpipe.spec import TrainSpec
from lmcpipe.training import resolve_vectorize, sgd_step_flops, train_seeds

log = logging.getLogger(__name__)

PATHS = {"vmap": True, "loop": False}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model, batch size and amount of data trained for the comparison."""

    name: str
    input_dim: int
    depth: int
    width: int
    batch: int
    seeds: int
    epochs: int
    n_train: int
    n_test: int

    def spec(self) -> TrainSpec:
        steps = self.n_train // self.batch
        return TrainSpec("random", self.depth, self.width, lr=0.01, epochs=self.epochs,
                         batch_size=self.batch, warmup_steps=min(10, self.epochs * steps - 1))

    def model(self) -> str:
        sizes = [self.input_dim] + [self.width] * self.depth + [workloads.N_CLASSES]
        return "-".join(str(size) for size in sizes)


# The default study's largest digits MLP (1437/360 examples, 3 seeds, 40 epochs),
# two models in between, and the reference model at batch 500.
FULL_WORKLOADS = (
    Workload("digits", 64, 1, 512, 64, 3, 40, 1437, 360),
    Workload("medium", 784, 1, 256, 64, 4, 1, 10_000, 1_000),
    Workload("large", 784, 1, 512, 128, 4, 1, 10_000, 1_000),
    Workload("reference", workloads.INPUT_DIM, workloads.DEPTH, workloads.WIDTH,
             workloads.BATCH, 4, 1, 10_000, 1_000),
)
SMOKE_WORKLOADS = (
    Workload("digits", 64, 1, 16, 64, 2, 2, 256, 64),
    Workload("reference", workloads.INPUT_DIM, workloads.DEPTH, 32, 100, 2, 1, 500, 100),
)


def random_dataset(input_dim: int, n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """Return uniform random inputs in [0, 1) of ``input_dim`` features and random labels."""
    rng = np.random.default_rng(seed)

    def split(n):
        return rng.random((n, input_dim), dtype=np.float32), rng.integers(0, workloads.N_CLASSES, n, dtype=np.int32)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Dataset("random", x_train, y_train, x_test, y_test, workloads.N_CLASSES)


def _time_call(spec, seeds, dataset, vectorize) -> dict:
    # Every cache of compiled programs: JAX's and lmcpipe's own per shape.
    jax.clear_caches()
    training._cached_programs.cache_clear()
    training._order_program.cache_clear()
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


def _summarise(samples: list[dict]) -> dict:
    runs = [sample["run_s"] for sample in samples]
    return {
        "calls": samples,
        "run_s": statistics.median(runs),
        "run_spread_s": max(runs) - min(runs),
        "compile_s": statistics.median(sample["compile_s"] for sample in samples),
        "wall_s": statistics.median(sample["wall_s"] for sample in samples),
    }


def compare(workload: Workload, repeats: int) -> dict:
    """Time ``repeats`` calls of each path on ``workload``, alternating which goes first."""
    spec = workload.spec()
    seeds = list(range(workload.seeds))
    dataset = random_dataset(workload.input_dim, workload.n_train, workload.n_test)
    calls = {name: [] for name in PATHS}
    for repeat in range(repeats):
        order = list(PATHS) if repeat % 2 == 0 else list(reversed(PATHS))
        for name in order:
            calls[name].append(_time_call(spec, seeds, dataset, PATHS[name]))
            log.info("%s, %d seeds with %s: %s", workload.name, len(seeds), name, calls[name][-1])
    paths = {name: _summarise(samples) for name, samples in calls.items()}

    faster = min(paths, key=lambda name: paths[name]["run_s"])
    slower = "loop" if faster == "vmap" else "vmap"
    difference = paths[slower]["run_s"] - paths[faster]["run_s"]
    within_noise = difference <= max(paths["vmap"]["run_spread_s"], paths["loop"]["run_spread_s"])
    auto = "vmap" if resolve_vectorize("auto", spec, workload.input_dim, workloads.N_CLASSES,
                                       len(seeds)) else "loop"
    steps = workload.epochs * (workload.n_train // workload.batch)
    return {
        **dataclasses.asdict(workload),
        "model": workload.model(),
        "step_flops": sgd_step_flops(spec, workload.input_dim, workloads.N_CLASSES),
        "steps_per_seed": steps,
        "paths": paths,
        "loop_over_vmap_run": paths["loop"]["run_s"] / paths["vmap"]["run_s"],
        "loop_over_vmap_wall": paths["loop"]["wall_s"] / paths["vmap"]["wall_s"],
        "faster": faster,
        "within_noise": within_noise,
        "auto_resolves_to": auto,
        "auto_picks_faster": auto == faster,
        "donation_warnings": sum(sample["donation_warnings"] for samples in calls.values()
                                 for sample in samples),
    }


def _rows(result: dict) -> list[dict]:
    vmap, loop = result["paths"]["vmap"], result["paths"]["loop"]
    label = (f"{result['name']} ({result['model']}, batch {result['batch']}, "
             f"{result['seeds']} seeds x {result['steps_per_seed']} steps)")
    verdict = result["faster"] + (", within noise" if result["within_noise"] else "")
    flops = result["step_flops"]
    cost = f"{flops / 1e9:.2f} GFLOP" if flops >= 1e9 else f"{flops / 1e6:.3g} MFLOP"
    return [
        row(f"{label}: run, vmap / loop",
            f"{vmap['run_s']:.2f} s / {loop['run_s']:.2f} s ({result['loop_over_vmap_run']:.2f}x)"),
        row(f"{result['name']}: compile, vmap / loop",
            f"{vmap['compile_s']:.2f} s / {loop['compile_s']:.2f} s"),
        row(f"{result['name']}: vectorize='auto' ({cost} per step)",
            result["auto_resolves_to"], f"the faster path: {verdict}",
            result["auto_picks_faster"] or result["within_noise"]),
    ]


def run(smoke: bool = False) -> dict:
    """Train K seeds both ways on every workload and return the section's results."""
    plan, repeats = (SMOKE_WORKLOADS, 1) if smoke else (FULL_WORKLOADS, 3)
    # Pay Python-side first-use costs (imports and caches of Flax, Optax and JAX) outside the timed calls.
    tiny = Workload("warmup", 16, 1, 8, 10, 2, 1, 20, 10)
    for vectorize in PATHS.values():
        train_seeds(tiny.spec(), [0, 1], random_dataset(16, 20, 10), vectorize=vectorize)

    results = [compare(workload, repeats) for workload in plan]
    donation_warnings = sum(result["donation_warnings"] for result in results)
    goal_met = all(result["auto_picks_faster"] or result["within_noise"] for result in results)
    rows = [entry for result in results for entry in _rows(result)]
    rows.append(row("vectorize='auto' picks the faster path", "yes" if goal_met else "no",
                    "at every workload outside noise", goal_met))
    rows.append(row("donation warnings", str(donation_warnings)))
    return {
        "backend": jax.default_backend(),
        "repeats": repeats,
        "workloads": results,
        "goal_met": goal_met,
        "donation_warnings": donation_warnings,
        "rows": rows,
    }
