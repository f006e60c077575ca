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

from conftest import count_compilations
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


def new_program(name="test.scaled_sum", settings=None, cpu_options=None):
    # A fresh jit and no compiled program in memory, as in a new process.
    jax.clear_caches()
    return StoredProgram(name, jax.jit(_scaled_sum, static_argnames=("power",)),
                         settings or {"k": 1}, cpu_options)


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


@pytest.mark.parametrize("change", ["settings", "name", "shape", "dtype", "static", "weak type",
                                    "options"])
def test_program_change_makes_new_entry(folder, change):
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
    elif change == "options":
        program = new_program(cpu_options=programs.CHEAP_COMPILE)
    _, compiled = count_compilations(lambda: program(*args, **static))
    assert compiled == 1
    assert len(list(folder.glob("*.pkl"))) == 2


def test_cpu_options_reach_the_compiler(monkeypatch):
    seen = []
    original = jax.stages.Lowered.compile

    def compile_(self, compiler_options=None):
        seen.append(compiler_options)
        return original(self, compiler_options)

    monkeypatch.setattr(jax.stages.Lowered, "compile", compile_)
    x = np.arange(6, dtype=np.float32)
    assert float(new_program(cpu_options=programs.CHEAP_COMPILE)(x, np.float32(2), power=3)) == 450.0
    assert seen == [programs.CHEAP_COMPILE]


def test_unknown_cpu_option_compiles_with_defaults(folder):
    x = np.arange(6, dtype=np.float32)
    program = new_program(cpu_options={"xla_cpu_no_such_option": True})
    assert float(program(x, np.float32(2), power=3)) == float(np.sum(x**3) * 2)
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        jax.jit(_scaled_sum, static_argnames=("power",)).lower(x, np.float32(2), power=3).compile(
            {"xla_cpu_no_such_option": True})


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
    result, compiled = count_compilations(lambda: make()(fresh, 1.0))
    assert compiled == 0
    assert fresh["w"].is_deleted()
    np.testing.assert_array_equal(result["w"], np.full(4, 2.0))


def test_executable_from_jax_memory_is_not_stored(folder):
    # JAX compiled the program already in this process, so it returns the
    # executable in its memory rather than a fresh compilation. Such an executable (like
    # one from JAX's persistent cache) may serialise without all of its code,
    # so it must not be stored.
    x = np.arange(6, dtype=np.float32)
    program = new_program()
    program.jitted.lower(x, np.float32(2), power=3).compile()
    assert float(program(x, np.float32(2), power=3)) == float(np.sum(x**3) * 2)
    assert not list(folder.glob("*.pkl"))
    # Control: freshly compiled, it is stored.
    new_program()(x, np.float32(2), power=3)
    assert len(list(folder.glob("*.pkl"))) == 1


def test_settings_in_effect_are_part_of_the_key(folder):
    def scale(x):
        return jnp.asarray(1.1) * x

    program = StoredProgram("test.scale", jax.jit(scale))
    x = np.arange(3, dtype=np.int32)
    assert program(x).dtype == jnp.float32
    with jax.enable_x64(True):
        assert program(x).dtype == jnp.float64
    assert len(list(folder.glob("*.pkl"))) == 2
    jax.clear_caches()
    assert StoredProgram("test.scale", jax.jit(scale))(x).dtype == jnp.float32


def test_node_types_are_part_of_the_key():
    import collections

    first = collections.namedtuple("Pair", "a b")
    second = collections.namedtuple("Pair", "a b")
    second.__module__ = "elsewhere"
    trees = [jax.tree_util.tree_structure(kind(1, 2)) for kind in (first, second)]
    assert str(trees[0]) == str(trees[1])
    assert programs._tree_key(trees[0]) != programs._tree_key(trees[1])


def test_program_with_host_callback_runs_unstored(folder, capfd):
    def noisy(x):
        jax.debug.print("sum {}", jnp.sum(x))
        return x * 2

    jax.clear_caches()
    result = StoredProgram("test.noisy", jax.jit(noisy))(np.ones(3, np.float32))
    np.testing.assert_array_equal(result, np.full(3, 2.0))
    assert "sum 3" in capfd.readouterr().out


def test_damaged_entry_is_compiled_again(folder, caplog):
    x = np.arange(6, dtype=np.float32)
    expected = new_program()(x, np.float32(2), power=3)
    (entry,) = folder.glob("*.pkl")
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="lmcpipe.programs"):
        result = new_program()(x, np.float32(2), power=3)
    assert float(result) == float(expected)
    assert "incomplete or damaged" in caplog.text


TRAIN = """
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from lmcpipe.runtime import enable_compilation_cache
enable_compilation_cache()
from lmcpipe.data import load_dataset
from lmcpipe.spec import TrainSpec
from lmcpipe.training import train_seeds
spec = TrainSpec("digits", 1, 8, 0.05, epochs={epochs}, batch_size=128)
results = train_seeds(spec, [0, 1], load_dataset("digits"))
print(json.dumps([r.params["hidden_0"]["kernel"].tolist() for r in results]))
"""


def train_in_new_process(cache, epochs=2):
    env = {**os.environ, CACHE_ENV_VAR: str(cache), "JAX_LOG_COMPILES": "1"}
    run = subprocess.run([sys.executable, "-c", TRAIN.format(epochs=epochs)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_second_training_process_traces_nothing(tmp_path):
    first, second = (train_in_new_process(tmp_path / "cache") for _ in range(2))
    assert "Finished tracing" in first.stderr
    assert "Stored program training.epoch" in first.stderr
    for name in ("initialise", "epoch", "evaluate"):
        assert f"Loaded stored program training.{name}" in second.stderr
    assert "Finished tracing" not in second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)


def test_jax_cache_hits_stay_runnable(tmp_path):
    # Two epochs counts give the same initialisation program under two keys:
    # the second run takes it from JAX's cache and must not store it. Every
    # later run must still run, and give the same result as a run without
    # any cache.
    cache = tmp_path / "cache"
    train_in_new_process(cache, epochs=2)
    second = train_in_new_process(cache, epochs=3)
    assert "Persistent compilation cache hit" in second.stderr
    third = train_in_new_process(cache, epochs=3)
    uncached = train_in_new_process("", epochs=3)
    assert json.loads(second.stdout) == json.loads(third.stdout) == json.loads(uncached.stdout)
