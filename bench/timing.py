"""Wall-clock timing and JAX compile-time accounting shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax

# Events that JAX reports for every compilation: tracing to a jaxpr, lowering
# to an MLIR module, and XLA's compilation (or the load of the compiled program
# from the persistent cache, which is reported under the same event).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def time_repeats(function: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Time ``function()`` ``repeats`` times after ``warmup`` untimed calls.

    ``function`` must wait for its results (``block_until_ready``), or the
    times measure only the dispatch of asynchronous JAX work.

    Returns:
        ``median_s`` and ``min_s`` over the timed calls, ``repeats`` and every
        sample in ``samples_s``.
    """
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "repeats": repeats,
        "samples_s": samples,
    }


class CompileTimer:
    """Context manager that sums JAX's compile time while it is active.

    ``seconds`` is the sum of the :data:`COMPILE_EVENTS` durations and
    ``count`` the number of XLA compilations (or cache loads). Only work on
    the calling process is seen.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration
            if event == COMPILE_EVENTS[-1]:
                self.count += 1

    def __enter__(self) -> "CompileTimer":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

