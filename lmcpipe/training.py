"""Training MLPs with Optax SGD, one seed at a time or many seeds in one program.

Every PRNG key derives from the spec: ``key(random_seed)`` folded with the
seed index gives the run key, split into an initialisation key and a
data-order key, so the members of a pair differ in both. The data-order key
is folded with the epoch index to shuffle each epoch.

A training job runs four XLA programs: the initial state of all seeds
(parameters, optimizer state and data-order keys), the minibatches of one
epoch, one epoch (``lax.scan`` over the SGD steps, with the data on the
device), and the evaluation on both splits. The learning rate, momentum,
warmup initial learning rate and random seed are arguments of these
programs, not constants, so settings that differ only in those share the
programs, within a process and through the compilation cache
(:mod:`lmcpipe.runtime`, :mod:`lmcpipe.programs`). The minibatch program
depends on the number of examples and the batch size only, so all widths
share it too.

The seeds of a setting train either in one program with ``jax.vmap`` or one
after another (the loop), which needs activation memory for one seed only.
``vectorize="auto"`` (:func:`resolve_vectorize`) picks vmap on a GPU or
TPU, where it is the main speed-up. On a CPU it picks vmap when one seed's
SGD step costs fewer than ``CPU_VMAP_MAX_STEP_FLOPS`` (100 MFLOP) matmul
FLOPs, and the loop otherwise. Measured on a 2-core CPU under load from
other jobs (run time without compilation, median of 7 interleaved calls,
3 or 4 seeds): vmap was 23 % faster at 0.3 MFLOP per step (64-16-10, batch
64) and 4 % faster at 52 MFLOP (784-256-10, batch 64). The loop was 6 %
faster at 209 MFLOP (784-512-10, batch 128) and at 2.4 GFLOP
(784-512-512-512-10, batch 500). At 10 MFLOP (64-512-10, batch 64) and 310
MFLOP (784-256-256-10, batch 256) the two were within 1 %, which is noise.
NOTE: the threshold comes from one CPU model. On other CPUs the crossover
may lie elsewhere, and ``vectorize=True`` or ``False`` overrides the rule.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from lmcpipe.data import Dataset
from lmcpipe.models import init_params, loss_and_correct
from lmcpipe.programs import CHEAP_COMPILE, FAST_COMPILE, StoredProgram
from lmcpipe.spec import TrainSpec

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
# On the CPU, vectorize="auto" trains the seeds with vmap when one seed's SGD step
# costs fewer matmul FLOPs than this (see resolve_vectorize).
CPU_VMAP_MAX_STEP_FLOPS = 100e6


@dataclasses.dataclass
class TrainResult:
    """Outcome of one seed: final parameters, per-epoch history and status."""

    seed: int
    params: dict
    history: dict[str, list]
    status: str


def seed_keys(spec: TrainSpec, seed: int) -> tuple[jax.Array, jax.Array]:
    """Return ``(init_key, order_key)`` of seed index ``seed``."""
    return _split_run_key(jax.random.fold_in(jax.random.key(spec.random_seed), seed))


def _split_run_key(run_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    init_key, order_key = jax.random.split(run_key)
    return init_key, order_key


def steps_per_epoch(spec: TrainSpec, n_train: int) -> int:
    steps = n_train // spec.batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={spec.batch_size} exceeds the {n_train} training examples"
        )
    return steps


def make_optimizer(
    spec: TrainSpec,
    n_train: int,
    lr: ArrayLike | None = None,
    momentum: ArrayLike | None = None,
    warmup_init_lr: ArrayLike | None = None,
) -> optax.GradientTransformation:
    """Return SGD with momentum under a warmup-cosine schedule.

    The learning rate rises linearly from ``warmup_init_lr`` to ``lr`` over
    ``warmup_steps`` steps, then follows a cosine decay to 0 at the last step
    (the schedule of ``optax.warmup_cosine_decay_schedule``).

    ``lr``, ``momentum`` and ``warmup_init_lr`` default to the spec's values
    and may be traced scalars, so that a compiled program takes them as
    arguments. ``spec.momentum`` still decides whether the optimizer has a
    momentum buffer, because that changes the optimizer state's structure.
    """
    total = spec.epochs * steps_per_epoch(spec, n_train)
    if spec.warmup_steps >= total:
        raise ValueError(
            f"warmup_steps={spec.warmup_steps} must be below the {total} "
            "training steps"
        )
    lr = spec.lr if lr is None else lr
    momentum = spec.momentum if momentum is None else momentum
    warmup_init_lr = spec.warmup_init_lr if warmup_init_lr is None else warmup_init_lr
    # optax.warmup_cosine_decay_schedule compares peak_value with 0 in Python,
    # which a traced lr does not allow, so its two parts are joined here.
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(warmup_init_lr, lr, spec.warmup_steps),
            optax.cosine_decay_schedule(lr, total - spec.warmup_steps, alpha=0.0),
        ],
        [spec.warmup_steps],
    )
    return optax.sgd(schedule, momentum=momentum if spec.momentum else None)


# XLA options of each training program on the CPU (lmcpipe.programs). The
# initialisation runs once per job, yet with XLA's defaults it is the
# costliest program to compile (1 to 3 s), because of the Threefry rounds
# behind each random initialiser. All four programs give the same bits as
# with XLA's defaults (tests/test_training.py checks them on three shapes).
PROGRAM_OPTIONS = {
    "initialise": CHEAP_COMPILE,
    "epoch": FAST_COMPILE,
    "evaluate": FAST_COMPILE,
    "order": CHEAP_COMPILE,
}


def _hyperparameters(spec: TrainSpec) -> dict[str, np.ndarray]:
    """Return the spec's scalars that the compiled training programs take as arguments."""
    return {
        "lr": np.float32(spec.lr),
        "momentum": np.float32(spec.momentum),
        "warmup_init_lr": np.float32(spec.warmup_init_lr),
    }


def _make_programs(spec: TrainSpec, n_train: int, input_dim: int, n_classes: int):
    """Return the un-jitted initialisation, epoch and evaluation functions.

    ``initialise`` builds the state of all seeds at once. ``epoch`` and
    ``evaluate`` work on one seed; ``epoch`` takes its minibatches from
    :func:`_make_order`. None of them depends on the learning rate, the
    momentum or the warmup's initial learning rate, which ``epoch`` takes as
    the argument ``hyperparameters``, so settings that differ only in those
    share one compiled program.
    """
    # Only the optimizer state's structure comes from here, not the scalars.
    init_optimizer = make_optimizer(spec, n_train)

    def initialise(random_seed, seeds):
        root_key = jax.random.key(random_seed)

        def one_seed(seed):
            init_key, order_key = _split_run_key(jax.random.fold_in(root_key, seed))
            params = init_params(init_key, input_dim, spec.depth, spec.width, n_classes)
            return params, init_optimizer.init(params), order_key

        return jax.vmap(one_seed)(seeds)

    def epoch(params, opt_state, batches, hyperparameters, x, y):
        optimizer = make_optimizer(spec, n_train, **hyperparameters)

        def step(carry, indices):
            params, opt_state = carry

            def mean_loss(p):
                return loss_and_correct(p, x[indices], y[indices])[0].mean()

            loss, grads = jax.value_and_grad(mean_loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state

    def evaluate(params, x_train, y_train, x_test, y_test):
        train_loss, train_correct = loss_and_correct(params, x_train, y_train)
        test_loss, test_correct = loss_and_correct(params, x_test, y_test)
        return jnp.stack(
            [train_loss.mean(), train_correct.mean(), test_loss.mean(), test_correct.mean()]
        )

    return initialise, epoch, evaluate


def _make_order(n_train: int, batch_size: int):
    """Return the function that draws every seed's minibatches of one epoch.

    It depends on the number of training examples and the batch size only.
    As a program of its own, it compiles once for all widths and learning
    rates of a study, instead of inside the epoch program of every width.
    """
    steps = n_train // batch_size

    def order(order_keys, epoch_index):
        def one_seed(order_key):
            key = jax.random.fold_in(order_key, epoch_index)
            permutation = jax.random.permutation(key, n_train)[: steps * batch_size]
            return permutation.reshape(steps, batch_size)

        return jax.vmap(one_seed)(order_keys)

    return order


def _compile_programs(spec: TrainSpec, n_train: int, input_dim: int, n_classes: int, use_vmap: bool):
    """Jit the ``(initialise, epoch, evaluate)`` programs of one execution path.

    Every leaf of the training state has a leading seed axis on both paths,
    and so have the minibatches. With ``use_vmap`` the epoch program trains
    all seeds at once. Without it, the epoch program trains the seed at
    ``position`` and writes it back in place, and evaluation runs the seeds
    one after another within one program, so either needs memory for one
    seed's activations only.
    """
    initialise, epoch, evaluate = _make_programs(spec, n_train, input_dim, n_classes)
    if use_vmap:
        epoch_program = jax.jit(
            jax.vmap(epoch, in_axes=(0, 0, 0, None, None, None)), donate_argnums=(0, 1)
        )
        evaluate_program = jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None, None)))
    else:

        def epoch_at(params, opt_state, batches, position, hyperparameters, x, y):
            def take(tree):
                return jax.tree_util.tree_map(lambda leaf: leaf[position], tree)

            def put(tree, new):
                return jax.tree_util.tree_map(lambda leaf, value: leaf.at[position].set(value), tree, new)

            new_params, new_opt_state = epoch(
                take(params), take(opt_state), batches[position], hyperparameters, x, y
            )
            return put(params, new_params), put(opt_state, new_opt_state)

        def evaluate_each(params, *data):
            return jax.lax.map(lambda seed_params: evaluate(seed_params, *data), params)

        epoch_program = jax.jit(epoch_at, donate_argnums=(0, 1))
        evaluate_program = jax.jit(evaluate_each)
    return jax.jit(initialise), epoch_program, evaluate_program


@functools.lru_cache(maxsize=4)
def _order_program(n_train: int, batch_size: int) -> StoredProgram:
    return StoredProgram("training.order", jax.jit(_make_order(n_train, batch_size)),
                         dict(n_train=n_train, batch_size=batch_size), PROGRAM_OPTIONS["order"])


@functools.lru_cache(maxsize=8)
def _cached_programs(depth, width, batch_size, epochs, warmup_steps, has_momentum,
                     n_train, input_dim, n_classes, use_vmap):
    # A stand-in spec with the fields the programs' shapes and structure depend on.
    spec = TrainSpec("cached", depth, width, lr=1.0, epochs=epochs, batch_size=batch_size,
                     momentum=0.9 if has_momentum else 0.0, warmup_steps=warmup_steps)
    programs = _compile_programs(spec, n_train, input_dim, n_classes, use_vmap)
    settings = dict(depth=depth, width=width, batch_size=batch_size, epochs=epochs,
                    warmup_steps=warmup_steps, has_momentum=has_momentum, n_train=n_train,
                    input_dim=input_dim, n_classes=n_classes, use_vmap=use_vmap)
    return tuple(StoredProgram(f"training.{name}", program, settings, PROGRAM_OPTIONS[name])
                 for name, program in zip(("initialise", "epoch", "evaluate"), programs))


def _programs_for(spec: TrainSpec, n_train: int, input_dim: int, n_classes: int, use_vmap: bool):
    """Return the programs of ``spec``, shared by settings of the same shapes.

    In this process they are the same objects; across processes they share
    compiled executables through the compilation cache (lmcpipe.programs).

    The key leaves out the learning rate, momentum, warmup initial learning
    rate and random seed, which the programs take as arguments, so a second
    setting that differs only in those reuses the compiled programs.
    """
    return _cached_programs(spec.depth, spec.width, spec.batch_size, spec.epochs,
                            spec.warmup_steps, bool(spec.momentum), n_train, input_dim,
                            n_classes, use_vmap)


def sgd_step_flops(spec: TrainSpec, input_dim: int, n_classes: int) -> int:
    """Return the matmul FLOPs of one seed's SGD step (forward and backward pass).

    With ``B`` the batch size and ``(in, out)`` the shape of every Dense
    kernel, the forward pass costs ``2 * B * sum(in * out)``, the kernel
    gradients as much again, and the gradients of every layer's input except
    the first layer's as much less ``2 * B * in_1 * out_1``. Bias,
    activation, loss and optimizer work grows with the widths only and is
    left out.
    """
    sizes = [input_dim] + [spec.width] * spec.depth + [n_classes]
    products = [fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    return 6 * spec.batch_size * sum(products) - 2 * spec.batch_size * products[0]


def resolve_vectorize(
    vectorize: str | bool,
    spec: TrainSpec,
    input_dim: int,
    n_classes: int,
    n_seeds: int,
    backend: str | None = None,
) -> bool:
    """Decide whether to train the seeds of ``spec`` in one ``vmap`` program.

    ``True`` and ``False`` are obeyed as given, except that a single seed is
    always trained alone. ``"auto"`` chooses vmap on every backend but the
    CPU. On the CPU it chooses vmap when one seed's SGD step costs fewer
    than :data:`CPU_VMAP_MAX_STEP_FLOPS` matmul FLOPs
    (:func:`sgd_step_flops`), and the loop otherwise. ``backend`` defaults
    to ``jax.default_backend()``. The choice and its reason are logged.
    """
    if isinstance(vectorize, str) and vectorize != "auto":
        raise ValueError(f"vectorize must be 'auto', True or False, got {vectorize!r}")
    if n_seeds < 2:
        log.info("execution path: loop, because there is one seed")
        return False
    if vectorize != "auto":
        use_vmap = bool(vectorize)
        log.info("execution path: %s, as requested", "vmap" if use_vmap else "loop")
        return use_vmap
    backend = backend or jax.default_backend()
    if backend != "cpu":
        log.info("execution path: vmap, the choice on every backend but the CPU (%s)", backend)
        return True
    flops = sgd_step_flops(spec, input_dim, n_classes)
    use_vmap = flops < CPU_VMAP_MAX_STEP_FLOPS
    log.info(
        "execution path: %s, because one seed's SGD step costs %.3g FLOPs, %s the "
        "CPU threshold of %.3g",
        "vmap" if use_vmap else "loop", flops, "below" if use_vmap else "at or above",
        CPU_VMAP_MAX_STEP_FLOPS,
    )
    return use_vmap


class TrainingDiverged(ValueError):
    """A seed's training loss became NaN or infinite and divergence is an error."""


@dataclasses.dataclass
class _State:
    """Training state of all seeds after ``epoch`` epochs; leaves have a leading seed axis."""

    params: dict
    opt_state: object
    epoch: int
    histories: list[dict[str, list]]
    diverged: dict[int, int]


def _state_meta(spec: TrainSpec, seeds: Sequence[int], use_vmap: bool) -> dict:
    return {"spec_hash": spec.hash(), "seeds": list(seeds), "vmap": use_vmap}


def _save_state(path: Path, state: _State, meta: dict) -> None:
    from lmcpipe.io import atomic_path

    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
    arrays = {f"leaf_{index}": np.asarray(leaf) for index, leaf in enumerate(leaves)}
    info = {**meta, "epoch": state.epoch, "histories": state.histories,
            "diverged": {str(k): v for k, v in state.diverged.items()}}
    arrays["__meta__"] = np.array(json.dumps(info))
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


def _load_state(path: Path, template: _State, meta: dict) -> _State | None:
    """Return the saved state at ``path`` if it continues this very run, else ``None``."""
    import zipfile

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            info = json.loads(str(archive["__meta__"]))
            leaves = [archive[f"leaf_{index}"] for index in range(len(archive.files) - 1)]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        log.warning("%s: unreadable training state (%s); starting from scratch", path, error)
        return None
    if any(info.get(key) != value for key, value in meta.items()):
        log.warning("%s: saved state belongs to other settings; starting from scratch", path)
        return None
    treedef = jax.tree_util.tree_structure((template.params, template.opt_state))
    expected = jax.tree_util.tree_leaves((template.params, template.opt_state))
    if len(leaves) != len(expected) or any(
        leaf.shape != np.shape(ref) for leaf, ref in zip(leaves, expected)
    ):
        log.warning("%s: saved state has other shapes; starting from scratch", path)
        return None
    params, opt_state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])
    log.info("resuming training from %s after epoch %d", path, info["epoch"])
    return _State(params, opt_state, info["epoch"], info["histories"],
                  {int(k): v for k, v in info["diverged"].items()})


def train_seeds(
    spec: TrainSpec,
    seeds: Sequence[int],
    dataset: Dataset,
    vectorize: str | bool = "auto",
    resume_path: str | Path | None = None,
    checkpoint_every: int = 1,
    on_divergence: str = "exclude",
) -> list[TrainResult]:
    """Train one MLP per seed index and return the results in seed order.

    Args:
        spec: training settings.
        seeds: distinct seed indices.
        dataset: training and test data.
        vectorize: ``"auto"``, ``True`` (one ``vmap`` program for all seeds)
            or ``False`` (one seed after another within each epoch).
        resume_path: file for the resumable training state. When it contains
            the state of this very run (same spec, seeds and execution path),
            training resumes after its last epoch. The result is then
            bit-identical to an uninterrupted run on the same machine.
        checkpoint_every: save the state every this many epochs.
        on_divergence: ``"exclude"`` stops a seed whose training loss becomes
            NaN or infinite at the end of an epoch and returns it with status
            ``"diverged"``; ``"error"`` raises :class:`TrainingDiverged`.
    """
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    if on_divergence not in ("exclude", "error"):
        raise ValueError(f"on_divergence must be 'exclude' or 'error', got {on_divergence!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    n_train = dataset.x_train.shape[0]
    use_vmap = resolve_vectorize(vectorize, spec, dataset.input_dim, dataset.n_classes, len(seeds))
    initialise, epoch_program, evaluate_program = _programs_for(
        spec, n_train, dataset.input_dim, dataset.n_classes, use_vmap
    )
    order_program = _order_program(n_train, spec.batch_size)
    hyperparameters = _hyperparameters(spec)
    data = tuple(
        jax.device_put(array)
        for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    )
    log.info(
        "training %d seed(s) of %s on %s, %s",
        len(seeds), spec.to_json(), jax.default_backend(),
        "vectorized with vmap" if use_vmap else "one seed at a time",
    )
    params, opt_state, order_keys = initialise(np.int64(spec.random_seed), np.asarray(seeds, np.int32))
    state = _State(params, opt_state, 0, [{name: [] for name in HISTORY_COLUMNS} for _ in seeds], {})
    meta = _state_meta(spec, seeds, use_vmap)
    resume_path = Path(resume_path) if resume_path is not None else None
    loaded = _load_state(resume_path, state, meta) if resume_path is not None else None
    if loaded is not None:
        state = loaded
    else:
        metrics = np.asarray(evaluate_program(state.params, *data))
        for position in range(len(seeds)):
            _history_row(state.histories[position], 0, metrics[position])
    for index in range(state.epoch + 1, spec.epochs + 1):
        batches = order_program(order_keys, np.int32(index))
        if use_vmap:
            state.params, state.opt_state = epoch_program(
                state.params, state.opt_state, batches, hyperparameters, data[0], data[1]
            )
        else:
            # A diverged seed is skipped and keeps its parameters.
            for position in range(len(seeds)):
                if position not in state.diverged:
                    state.params, state.opt_state = epoch_program(
                        state.params, state.opt_state, batches, np.int32(position),
                        hyperparameters, data[0], data[1],
                    )
        state.epoch = index
        metrics = np.asarray(evaluate_program(state.params, *data))
        for position, seed in enumerate(seeds):
            if position in state.diverged:
                continue
            _history_row(state.histories[position], index, metrics[position])
            log.info("seed %d epoch %d: %s", seed, index, ", ".join(
                f"{name} {value:.4f}" for name, value in zip(HISTORY_COLUMNS[1:], metrics[position])
            ))
            if not math.isfinite(metrics[position][0]):
                message = f"seed {seed} diverged at epoch {index} (train loss {metrics[position][0]})"
                if on_divergence == "error":
                    raise TrainingDiverged(
                        f"{message}; lower the learning rate, or set "
                        "training.on_divergence: exclude to record it and go on"
                    )
                log.warning("%s; it is excluded from alignment, barriers and correlations", message)
                state.diverged[position] = index
        if resume_path is not None and (index % checkpoint_every == 0 or index == spec.epochs):
            _save_state(resume_path, state, meta)
        if len(state.diverged) == len(seeds):
            break
    host = jax.device_get(state.params)
    return [
        TrainResult(
            seed,
            jax.tree_util.tree_map(lambda leaf, p=position: leaf[p], host),
            state.histories[position],
            STATUS_DIVERGED if position in state.diverged else STATUS_OK,
        )
        for position, seed in enumerate(seeds)
    ]


def _history_row(history: dict[str, list], epoch_index: int, metrics: np.ndarray) -> None:
    history["epoch"].append(epoch_index)
    for name, value in zip(HISTORY_COLUMNS[1:], metrics):
        history[name].append(float(value))


def history_table(spec: TrainSpec, result: TrainResult):
    """Return the per-epoch history of one seed as a table with the run keys."""
    import pyarrow as pa

    n = len(result.history["epoch"])
    columns = {key: [value] * n for key, value in spec.run_keys().items()}
    columns["seed"] = [result.seed] * n
    columns["status"] = [result.status] * n
    columns.update(result.history)
    return pa.table(columns)


def train_to_files(
    spec: TrainSpec,
    seeds: Sequence[int],
    out_dir,
    vectorize: str | bool = "auto",
    checkpoint_every: int = 1,
    on_divergence: str = "exclude",
) -> None:
    """Train every seed and write ``seed<k>/params.npz`` and ``seed<k>/history.parquet``.

    The resumable state is kept in ``<out_dir>/training_state.npz`` while
    the job runs, so a killed job resumes where it stopped when rerun. It is
    removed once every output is written.
    """
    from lmcpipe.data import load_for_spec
    from lmcpipe.io import save_checkpoint, table_metadata, write_table

    dataset = load_for_spec(spec)
    state_path = Path(out_dir) / "training_state.npz"
    results = train_seeds(spec, seeds, dataset, vectorize, state_path, checkpoint_every, on_divergence)
    backend = jax.default_backend()
    for result in results:
        folder = Path(out_dir) / f"seed{result.seed}"
        meta = {
            "spec": spec.to_dict(),
            "spec_hash": spec.hash(),
            "seed": result.seed,
            "status": result.status,
            "jax_version": jax.__version__,
            "backend": backend,
        }
        metadata = table_metadata(spec.hash(), backend=backend, status=result.status)
        write_table(history_table(spec, result), folder / "history.parquet", metadata)
        save_checkpoint(folder / "params.npz", result.params, meta)
    state_path.unlink(missing_ok=True)
