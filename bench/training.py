"""Benchmark: achieved FLOP/s of one compiled SGD step against dense matmul.

The step is lmcpipe's training step on the reference MLP at batch 500 on
random data: the mean cross-entropy of :func:`lmcpipe.models.loss_and_correct`,
its gradient, and the SGD-with-momentum update of
:func:`lmcpipe.training.make_optimizer`, jitted with the parameters and
optimizer state donated, as in :mod:`lmcpipe.training`. The batch stays on
the device between steps.

FLOPs are counted analytically (:func:`bench.workloads.step_flops`:
``6 * B * sum(in * out) - 2 * B * in_1 * out_1``, the matmuls only); XLA's
own count from ``compile().cost_analysis()`` is recorded beside it. The
reference is the FLOP/s of ``jnp.dot`` on the step's matmul shapes (forward,
kernel gradient and input gradient of every layer), measured in the same
run. The peak is the fastest of them. The sum of those matmuls' times, each
as often as the step runs it, is recorded too: the step cannot beat it by
much, whatever the peak. NumPy's ``np.dot`` on the same shapes is recorded too,
because the BLAS it calls can be faster than XLA's CPU matmul.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import workloads
from bench.report import row
from bench.timing import time_repeats
from lmcpipe.models import loss_and_correct
from lmcpipe.spec import TrainSpec
from lmcpipe.training import make_optimizer

log = logging.getLogger(__name__)

GOAL_RATIO = 0.5


def _step_program(spec: TrainSpec):
    # One batch per epoch: the schedule lasts spec.epochs steps, far more than are timed.
    optimizer = make_optimizer(spec, spec.batch_size)

    def step(params, opt_state, x, y):
        def mean_loss(p):
            return loss_and_correct(p, x, y)[0].mean()

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


def _step_matmuls(batch: int, shapes: list[tuple[int, int]]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Return the ``(lhs, rhs)`` shapes of every matmul of one step, repeats included.

    Their FLOPs add up to :func:`bench.workloads.step_flops`.
    """
    matmuls = []
    for index, (fan_in, fan_out) in enumerate(shapes):
        matmuls.append(((batch, fan_in), (fan_in, fan_out)))  # forward
        matmuls.append(((fan_in, batch), (batch, fan_out)))  # kernel gradient
        if index > 0:
            matmuls.append(((batch, fan_out), (fan_out, fan_in)))  # input gradient
    return matmuls


def _matmul_rates(matmuls, repeats) -> list[dict]:
    """Time ``jnp.dot`` on every distinct shape, then ``np.dot`` on each.

    The two libraries run one after the other, not interleaved, so that
    neither one's worker threads are still busy while the other is timed.
    """
    rng = np.random.default_rng(0)
    operands = {
        shapes: (rng.random(shapes[0], dtype=np.float32), rng.random(shapes[1], dtype=np.float32))
        for shapes in dict.fromkeys(matmuls)
    }
    dot = jax.jit(jnp.dot)
    rates = {}
    for shapes, (lhs, rhs) in operands.items():
        lhs_device, rhs_device = jax.device_put(lhs), jax.device_put(rhs)
        timing = time_repeats(lambda: dot(lhs_device, rhs_device).block_until_ready(), repeats)
        flops = 2 * shapes[0][0] * shapes[0][1] * shapes[1][1]
        rates[shapes] = {
            "shape": f"{shapes[0][0]}x{shapes[0][1]} @ {shapes[1][0]}x{shapes[1][1]}",
            "count_per_step": matmuls.count(shapes),
            "flops": flops,
            "jax_median_s": timing["median_s"],
            "jax_flops_per_s": flops / timing["median_s"],
        }
    for shapes, (lhs, rhs) in operands.items():
        timing = time_repeats(lambda: np.dot(lhs, rhs), repeats)
        rates[shapes]["numpy_median_s"] = timing["median_s"]
        rates[shapes]["numpy_flops_per_s"] = rates[shapes]["flops"] / timing["median_s"]
    for rate in rates.values():
        log.info("matmul %s: %.1f GFLOP/s with jnp.dot, %.1f GFLOP/s with np.dot",
                 rate["shape"], rate["jax_flops_per_s"] / 1e9, rate["numpy_flops_per_s"] / 1e9)
    return list(rates.values())


def _xla_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older JAX returns one dict per device
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None else None


def run(smoke: bool = False) -> dict:
    """Measure one SGD step and the matmul reference; return the section's results."""
    width, batch = (64, 100) if smoke else (workloads.WIDTH, workloads.BATCH)
    repeats = 3 if smoke else 20
    shapes = workloads.layer_shapes(width)
    spec = TrainSpec("random", workloads.DEPTH, width, lr=0.01, epochs=10_000, batch_size=batch)
    optimizer, step = _step_program(spec)
    x, y = workloads.random_inputs(batch)
    x, y = jax.device_put(x), jax.device_put(y)
    params = workloads.mlp(0, width)
    opt_state = optimizer.init(params)
    compiled = step.lower(params, opt_state, x, y).compile()
    xla_flops = _xla_flops(compiled)

    before = jax.tree_util.tree_leaves(params)
    params, opt_state, loss = compiled(params, opt_state, x, y)
    loss.block_until_ready()
    donated = all(leaf.is_deleted() for leaf in before)

    state = {"params": params, "opt_state": opt_state}

    def one_step():
        state["params"], state["opt_state"], loss = compiled(state["params"], state["opt_state"], x, y)
        loss.block_until_ready()

    timing = time_repeats(one_step, repeats)
    flops = workloads.step_flops(batch, shapes)
    achieved = flops / timing["median_s"]

    matmul = _matmul_rates(_step_matmuls(batch, shapes), repeats)
    peak = max(rate["jax_flops_per_s"] for rate in matmul)
    numpy_peak = max(rate["numpy_flops_per_s"] for rate in matmul)
    ratio = achieved / peak
    # The step's time if each of its matmuls ran as fast as jnp.dot alone.
    matmul_seconds = sum(rate["count_per_step"] * rate["jax_median_s"] for rate in matmul)
    log.info("SGD step: %.4f s, %.1f GFLOP/s, %.0f %% of the jnp.dot peak of %.1f GFLOP/s",
             timing["median_s"], achieved / 1e9, 100 * ratio, peak / 1e9)
    model = workloads.model_name(width)
    return {
        "model": f"{model} ReLU MLP, random inputs and labels",
        "batch": batch,
        "flops_per_step": flops,
        "flops_formula": "6*B*sum(in*out) - 2*B*in_1*out_1 (matmuls only, analytic)",
        "xla_flops_per_step": xla_flops,
        "step": timing,
        "step_flops_per_s": achieved,
        "matmul": matmul,
        "matmul_peak_flops_per_s": peak,
        "step_matmuls_as_jnp_dot_s": matmul_seconds,
        "numpy_matmul_peak_flops_per_s": numpy_peak,
        "ratio_to_matmul_peak": ratio,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "donated_buffers_deleted": donated,
        "rows": [
            row(f"SGD step, {model}, batch {batch}", f"{timing['median_s'] * 1e3:.2f} ms"),
            row("step FLOP/s (analytic FLOPs)", f"{achieved / 1e9:.1f} GFLOP/s"),
            row("jnp.dot peak on the step's shapes", f"{peak / 1e9:.1f} GFLOP/s"),
            row("np.dot peak on the same shapes (reference)", f"{numpy_peak / 1e9:.1f} GFLOP/s"),
            row("the step's matmuls as separate jnp.dot calls", f"{matmul_seconds * 1e3:.2f} ms"),
            row("step / jnp.dot peak", f"{100 * ratio:.0f} %", f">= {100 * GOAL_RATIO:.0f} %",
                ratio >= GOAL_RATIO),
            row("donated parameter buffers freed", str(donated)),
        ],
    }
