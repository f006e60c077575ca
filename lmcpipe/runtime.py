"""Process-wide JAX settings of the ``lmcpipe`` command.

Each step of a study runs as a fresh process, so by default every job
compiles its XLA programs again. JAX's persistent compilation cache stores
each compiled program in a folder, keyed by its HLO, the compile options and
the JAX, jaxlib and backend versions. A later process that compiles the same
program loads it from there instead. In a study this saves the compilation
of a rerun job, and of the ``barrier``, ``align`` and ``wasserstein`` jobs of
a setting whose programs have the same shapes as an earlier setting's,
because the learning rate is not part of those programs. The training
programs take the learning rate, momentum and warmup initial learning rate
as arguments, so the ``train`` jobs of settings that differ only in those
share their programs too. lmcpipe keeps its own programs' executables in the
same folder as well, under keys that need no tracing (see
:mod:`lmcpipe.programs`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "LMCPIPE_COMPILATION_CACHE"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path``.

    Without ``path``, the folder comes from the environment variable
    ``LMCPIPE_COMPILATION_CACHE``. When that is unset or empty, the cache
    stays off and None is returned. Every program is cached, however short
    its compile time or small its executable, because most programs of a
    study compile in less than JAX's default threshold of 1 s and a job
    compiles several of them.

    When JAX is not imported yet, the settings go to the environment
    variables that JAX reads at import (``JAX_COMPILATION_CACHE_DIR`` and
    the two thresholds), so a step that never uses JAX does not pay for
    importing it. JAX decides once per process, at its first compilation,
    whether to use the cache, so call this before any JAX computation.

    Returns:
        The absolute path of the cache folder, or None when the cache is off.

    Raises:
        OSError: the folder cannot be created.

    NOTE: JAX writes cache entries without a lock when the cache has no size
    limit, so two jobs that compile the same program at once may both write
    it. A job that reads a partly written entry gets a warning from JAX and
    compiles the program itself.
    """
    if path is None:
        path = os.environ.get(CACHE_ENV_VAR, "")
    if not str(path):
        return None
    folder = Path(path).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": str(folder),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        # -1 turns the entry size threshold off, while 0 would let JAX choose one.
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:
        for name, value in settings.items():
            os.environ[name.upper()] = str(value)
    log.info("persistent JAX compilation cache in %s", folder)
    return folder
