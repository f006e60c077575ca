"""Compiled programs stored between processes (lmcpipe.programs)."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmcpipe import programs
from lmcpipe.programs import StoredProgram
from lmcpipe.runtime import CACHE_ENV_VAR


def _scaled_sum(x, y, power):
    return jnp.sum(x**power) * y


@pytest.fixture
def folder(tmp_path, monkeypatch):
    folder = tmp_path / "programs"
    monkeypatch.setattr(programs, "_cache_folder", lambda: folder)
    return folder


def count_compilations(function):
    """Call ``function``; return its result and the number of XLA compilations it caused."""
    count = 0

    def listen(event, duration, **kwargs):
        nonlocal count
        if event == "/jax/core/compile/backend_compile_duration":
            count += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        result = function()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return result, count


def new_program(name="test.scaled_sum", settings=None):
    # A fresh jit and no compiled program in memory, as in a new process.
    jax.clear_caches()
    return StoredProgram(name, jax.jit(_scaled_sum, static_argnames=("power",)), settings or {"k": 1})


def test_second_instance_loads_without_compiling(folder, caplog):
    x = np.arange(6, dtype=np.float32)
    first, compiled = count_compilations(lambda: new_program()(x, np.float32(2), power=3))
    assert compiled == 1
    assert len(list(folder.glob("*.pkl"))) == 1
    with caplog.at_level(logging.DEBUG, logger="lmcpipe.programs"):
        second, compiled = count_compilations(lambda: new_program()(x, np.float32(2), power=3))
    assert compiled == 0
    assert float(second) == float(first) == float(np.sum(x**3) * 2)
    assert "Loaded stored program test.scaled_sum" in caplog.text


@pytest.mark.parametrize("change", ["settings", "name", "shape", "dtype", "static", "weak type"])
def test_anything_that_shapes_the_program_makes_a_new_entry(folder, change):
    x = np.arange(6, dtype=np.float32)
    new_program()(x, np.float32(2), power=3)
    program, args, static = new_program(), (x, np.float32(2)), {"power": 3}
    if change == "settings":
        program = new_program(settings={"k": 2})
    elif change == "name":
        program = new_program(name="test.other")
    elif change == "shape":
        args = (np.arange(7, dtype=np.float32), np.float32(2))
    elif change == "dtype":
        args = (np.arange(6, dtype=np.int32), np.float32(2))
    elif change == "static":
        static = {"power": 2}
    elif change == "weak type":
        args = (x, 2.0)
    _, compiled = count_compilations(lambda: program(*args, **static))
    assert compiled == 1
    assert len(list(folder.glob("*.pkl"))) == 2


def test_other_source_makes_a_new_entry(folder, monkeypatch):
    x = np.arange(6, dtype=np.float32)
    new_program()(x, np.float32(2), power=3)
    monkeypatch.setattr(programs, "_SOURCE", "edited")
    monkeypatch.setattr(programs, "_environment", None)
    _, compiled = count_compilations(lambda: new_program()(x, np.float32(2), power=3))
    assert compiled == 1
    assert len(list(folder.glob("*.pkl"))) == 2


def test_unreadable_entry_is_compiled_and_replaced(folder, caplog):
    x = np.arange(6, dtype=np.float32)
    expected = new_program()(x, np.float32(2), power=3)
    (entry,) = folder.glob("*.pkl")
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="lmcpipe.programs"):
        result, compiled = count_compilations(lambda: new_program()(x, np.float32(2), power=3))
    assert compiled == 1
    assert float(result) == float(expected)
    assert "cannot load stored program test.scaled_sum" in caplog.text
    # The entry was replaced by a whole one.
    _, compiled = count_compilations(lambda: new_program()(x, np.float32(2), power=3))
    assert compiled == 0


def test_cache_off_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "_cache_folder", lambda: None)
    x = np.arange(6, dtype=np.float32)
    program = new_program()
    assert float(program(x, np.float32(1), power=1)) == 15.0
    _, compiled = count_compilations(lambda: program(x, np.float32(1), power=1))
    assert compiled == 0  # held in memory
    assert program.cache_size() == 1
    assert not list(tmp_path.rglob("*.pkl"))


def test_loaded_program_keeps_donation(folder):
    def step(params, x):
        return jax.tree_util.tree_map(lambda p: p + x, params)

    def make():
        jax.clear_caches()
        return StoredProgram("test.step", jax.jit(step, donate_argnums=(0,)))

    params = {"w": jnp.ones(4), "b": jnp.zeros(2)}
    make()(params, 1.0)
    fresh = {"w": jnp.ones(4), "b": jnp.zeros(2)}
    (result, compiled) = count_compilations(lambda: make()(fresh, 1.0))
    assert compiled == 0
    assert fresh["w"].is_deleted()
    np.testing.assert_array_equal(result["w"], np.full(4, 2.0))


TRAIN = """
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from lmcpipe.runtime import enable_compilation_cache
enable_compilation_cache()
from lmcpipe.data import load_dataset
from lmcpipe.spec import TrainSpec
from lmcpipe.training import train_seeds
spec = TrainSpec("digits", 1, 8, 0.05, epochs=2, batch_size=128)
results = train_seeds(spec, [0, 1], load_dataset("digits"))
print(json.dumps([r.params["hidden_0"]["kernel"].tolist() for r in results]))
"""


def test_second_training_process_traces_nothing(tmp_path):
    env = {**os.environ, CACHE_ENV_VAR: str(tmp_path / "cache"), "JAX_LOG_COMPILES": "1"}
    runs = [subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True,
                           env=env, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    first, second = runs
    assert "Finished tracing" in first.stderr
    assert "Stored program training.epoch" in first.stderr
    for name in ("initialise", "epoch", "evaluate"):
        assert f"Loaded stored program training.{name}" in second.stderr
    assert "Finished tracing" not in second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
