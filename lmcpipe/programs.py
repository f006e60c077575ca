"""Compiled programs that a later process loads without tracing them again.

JAX's persistent compilation cache (see :mod:`lmcpipe.runtime`) spares a job
the XLA compilation of a program that an earlier job compiled. It cannot
spare the tracing and lowering, because its key is a hash of the lowered
program: 0.1 to 0.3 s per program, most of a warm job's start-up in a small
study. A :class:`StoredProgram` keeps each compiled executable in the same
folder under a key made without tracing, from what determines the program:

* its name and the settings that shape it, given by the caller;
* the tree structure (with each node's type), shapes, dtypes and device
  placement of its arguments, and the values of its static arguments;
* the source of every lmcpipe module, as it was when this module was
  imported;
* the versions of JAX, jaxlib, Flax, Optax, NumPy and ml_dtypes, JAX's
  configuration in effect, ``XLA_FLAGS``, the backend and its devices, and
  the CPU.

A key that matches loads the executable with
``jax.experimental.serialize_executable``; any other key traces, lowers and
compiles as ``jax.jit`` does and stores the result. An entry whose checksum
or contents do not match is compiled again and replaced.

Only an executable that XLA compiled in this call is stored. One that JAX
took from its own cache runs, but serialises without all of its code: loaded
in another process, it fails when it runs.

The settings a caller gives must be everything its function depends on
besides the arguments: a closed-over value missing from them would load
another program of the same name and argument shapes.

On the CPU a program compiles with the XLA options it is given
(:data:`FAST_COMPILE` or :data:`CHEAP_COMPILE`), which cut the compilation
time of a study's small programs. The programs that use them give the same
bits as with XLA's defaults (tests/test_training.py checks them).

NOTE: loading an entry unpickles it, as JAX's own cache does with its
entries, so the cache folder must be as trusted as the code. The source
digest is taken when this module is imported. A module edited after that
and imported later in the same process builds programs under keys of the
old source. The worker (lmcpipe.worker) imports every module at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import platform
import time
from pathlib import Path

import jax
import numpy as np

from lmcpipe.io import atomic_path

log = logging.getLogger(__name__)

# Bumped when the layout of an entry or of the key changes.
FORMAT = 2
_MAGIC = b"lmcpipe-program\n"
SUBFOLDER = "lmcpipe-programs"

# XLA options on the CPU. By default XLA emits the loops of fused operations
# with its MLIR fusion emitters. Its LLVM IR emitters compile the programs of
# training 35 to 45 % faster and run them as fast (measured on the default
# study's widths). Not every program gains: the interpolation curves ran 10 %
# slower with them at width 512. So each program names its options.
# CHEAP_COMPILE adds LLVM's optimisation level 1 for programs that run once
# per job or per epoch (initialisation, minibatch order): about half the
# compilation time again.
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
CHEAP_COMPILE = {**FAST_COMPILE, "xla_backend_optimization_level": 1}

# JAX settings that change logging or caching, not the programs.
_UNRELATED_SETTINGS = frozenset({
    "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes", "jax_enable_compilation_cache",
    "jax_compilation_cache_max_size", "jax_log_compiles", "jax_explain_cache_misses",
    "jax_logging_level", "jax_debug_log_modules", "jax_raise_persistent_cache_errors",
})


def _source_digest() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


_SOURCE = _source_digest()
_environment: str | None = None


def _cpu() -> str:
    """Return the CPU's model and instruction set flags, which XLA's CPU code depends on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "flags", "Features", "CPU part") and name not in fields:
            fields[name] = value.strip()
    return json.dumps(fields, sort_keys=True)


def _environment_key() -> str:
    """Return the part of the key that stays the same within a process.

    That is lmcpipe's source, the library versions, ``XLA_FLAGS``, the backend and the CPU.
    """
    global _environment
    if _environment is None:
        import flax
        import jaxlib
        import ml_dtypes
        import optax

        devices = jax.devices()
        _environment = json.dumps({
            "source": _SOURCE,
            "versions": [jax.__version__, jaxlib.__version__, flax.__version__, optax.__version__,
                         np.__version__, ml_dtypes.__version__],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "backend": [devices[0].platform, devices[0].client.platform_version,
                        [device.device_kind for device in devices]],
            "cpu": _cpu(),
            "machine": platform.machine(),
        }, sort_keys=True)
    return _environment


def _settings_key() -> str:
    """Return JAX's settings in effect, context managers such as ``jax.enable_x64`` included."""
    return json.dumps({name: repr(value) for name, value in jax.config.values.items()
                       if name not in _UNRELATED_SETTINGS}, sort_keys=True)


def _trace_context():
    """Return a cheap, hashable token of JAX's settings in effect (JAX's own jit cache uses it)."""
    from jax._src import config

    return config.trace_context() if hasattr(config, "trace_context") else _settings_key()


def _tree_key(tree) -> list | str:
    """Describe a tree structure with each node's module-qualified type, which its string form lacks."""
    data = tree.node_data()
    if data is None:
        return "*"
    kind, auxiliary = data
    return [f"{kind.__module__}.{kind.__qualname__}", repr(auxiliary),
            [_tree_key(child) for child in tree.children()]]


def _leaf_type(leaf) -> tuple:
    if isinstance(leaf, jax.Array):
        return (leaf.shape, str(leaf.dtype), leaf.aval.weak_type, str(leaf.sharding))
    if isinstance(leaf, (bool, int, float, complex)):
        return ((), type(leaf).__name__, True)
    array = np.asarray(leaf)
    return (array.shape, str(array.dtype), False)


def _cache_folder() -> Path | None:
    """Return the folder of stored programs: inside JAX's compilation cache, when that is on."""
    folder = jax.config.jax_compilation_cache_dir
    if not folder or not jax.config.jax_enable_compilation_cache:
        return None
    return Path(folder) / SUBFOLDER


def _report(message: str, *args) -> None:
    # Shown with JAX's own compilation messages (JAX_LOG_COMPILES=1).
    log.log(logging.INFO if jax.config.jax_log_compiles else logging.DEBUG, message, *args)


class StoredProgram:
    """A jitted function whose compiled executables are kept on disk between processes.

    Args:
        name: the program's name, unique in lmcpipe.
        jitted: the ``jax.jit`` function, with its donations.
        settings: JSON-serialisable values that the function depends on besides
            its arguments (the shapes and options it was built for).
        cpu_options: XLA compiler options used on the CPU backend only
            (:data:`FAST_COMPILE`, :data:`CHEAP_COMPILE`). With a jaxlib
            that does not support one of them, the program compiles with
            XLA's defaults.

    Call it as ``jitted``; static arguments go by keyword.
    """

    def __init__(self, name: str, jitted, settings: dict | None = None,
                 cpu_options: dict | None = None):
        self.name = name
        self.jitted = jitted
        self.settings = dict(settings or {})
        self.cpu_options = dict(cpu_options or {})
        self._compiled: dict = {}

    def __call__(self, *args, **static):
        leaves, tree = jax.tree_util.tree_flatten(args)
        signature = (tree, tuple(_leaf_type(leaf) for leaf in leaves),
                     tuple(sorted(static.items())), _trace_context())
        compiled = self._compiled.get(signature)
        if compiled is None:
            compiled = self._compiled[signature] = self._load_or_compile(args, static, signature)
        return compiled(*args)

    def lower(self, *args, **static):
        return self.jitted.lower(*args, **static)

    def cache_size(self) -> int:
        """Return the number of executables in this process's memory, one per argument signature."""
        return len(self._compiled)

    def _key(self, signature) -> str:
        tree, types, static, _ = signature
        text = json.dumps([FORMAT, self.name, self.settings, self._options(), _tree_key(tree),
                           types, static, _settings_key(), _environment_key()],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _load_or_compile(self, args, static, signature):
        folder = _cache_folder()
        path = folder / f"{self._key(signature)}.pkl" if folder is not None else None
        if path is not None and path.exists():
            compiled = self._load(path)
            if compiled is not None:
                return compiled
        compiled, fresh = _compile(self.name, self.jitted, args, static, self._options())
        if path is not None and fresh:
            self._store(path, compiled)
        return compiled

    def _options(self) -> dict:
        return self.cpu_options if jax.default_backend() == "cpu" else {}

    def _load(self, path: Path):
        from jax.experimental import serialize_executable

        started = time.perf_counter()
        try:
            data = path.read_bytes()
            header = len(_MAGIC) + hashlib.sha256().digest_size
            payload = data[header:]
            if data[:len(_MAGIC)] != _MAGIC or data[len(_MAGIC):header] != hashlib.sha256(payload).digest():
                raise ValueError("the entry is incomplete or damaged")
            compiled = serialize_executable.deserialize_and_load(*pickle.loads(payload))
        # Whatever an unreadable or incompatible entry raises, the program is
        # compiled again and the entry replaced.
        except Exception as error:
            log.warning("cannot load stored program %s from %s (%s: %s); compiling it",
                        self.name, path, type(error).__name__, error)
            return None
        _report("Loaded stored program %s in %.6f sec", self.name, time.perf_counter() - started)
        return compiled

    def _store(self, path: Path, compiled) -> None:
        from jax.experimental import serialize_executable

        started = time.perf_counter()
        try:
            payload = pickle.dumps(serialize_executable.serialize(compiled))
            with atomic_path(path) as temporary:
                temporary.write_bytes(_MAGIC + hashlib.sha256(payload).digest() + payload)
        # Storing only saves later jobs time. A program that cannot be
        # serialised (one with a host callback, say) or a folder that cannot
        # be written must not fail the step.
        except Exception as error:
            log.debug("cannot store program %s: %s", self.name, error)
            return
        _report("Stored program %s in %.6f sec", self.name, time.perf_counter() - started)


def _compile(name: str, jitted, args, static, options: dict):
    """Compile ``jitted`` for ``args``; return the executable and whether XLA compiled it now.

    An executable from JAX's persistent cache, or from JAX's memory of an
    earlier compilation in this process, is not fresh.
    """
    lowered = jitted.lower(*args, **static)
    events = []

    def on_event(event, **kwargs):
        events.append(event)

    def on_duration(event, duration, **kwargs):
        events.append(event)

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        try:
            compiled = lowered.compile(options or None)
        except jax.errors.JaxRuntimeError as error:
            if not options or "No such compile option" not in str(error):
                raise
            log.debug("compiling program %s with XLA's default options: %s", name, error)
            compiled = lowered.compile()
    finally:
        jax.monitoring.unregister_event_listener(on_event)
        jax.monitoring.unregister_event_duration_listener(on_duration)
    fresh = (_BACKEND_COMPILE_EVENT in events) and (_CACHE_HIT_EVENT not in events)
    return compiled, fresh


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
