"""The persistent JAX compilation cache switch of lmcpipe.runtime.

JAX decides once per process whether to use the cache, and this test
process has compiled programs already, so the cases that compile run in a
fresh interpreter.
"""

import os
import subprocess
import sys

from lmcpipe.runtime import CACHE_ENV_VAR, enable_compilation_cache

COMPILE_AND_COUNT_HITS = """
import jax, jax.numpy as jnp
from lmcpipe.runtime import enable_compilation_cache
{before}
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None)
enable_compilation_cache()
jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).block_until_ready()
print(len(hits))
"""


def run_python(code: str, cache: str) -> str:
    env = {**os.environ, CACHE_ENV_VAR: cache}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_cache_off_without_variable(monkeypatch):
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    assert enable_compilation_cache() is None


def test_cache_off_when_variable_empty(monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, "")
    assert enable_compilation_cache() is None


def test_second_process_hits_cache(tmp_path):
    cache = tmp_path / "cache"
    code = COMPILE_AND_COUNT_HITS.format(before="")
    first = run_python(code, str(cache))
    second = run_python(code, str(cache))
    assert first == "0"
    assert int(second) >= 1
    assert any(name.endswith("-cache") for name in os.listdir(cache))


def test_cache_set_before_jax_import(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import sys\n"
        "from lmcpipe.runtime import enable_compilation_cache\n"
        "folder = enable_compilation_cache()\n"
        "print('jax' in sys.modules)\n"
        "import jax\n"
        "print(jax.config.jax_compilation_cache_dir == str(folder))\n"
        "print(jax.config.jax_persistent_cache_min_compile_time_secs)\n"
    )
    lines = run_python(code, str(cache)).splitlines()
    assert lines[0] == "False"
    assert lines[1] == "True"
    assert float(lines[2]) == 0.0
    assert cache.is_dir()
