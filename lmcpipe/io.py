"""Atomic file writing, table metadata and the checkpoint format.

Every output is written to a temporary file in the destination folder and
renamed into place, so a killed job leaves either the old file or the new one,
never a truncated file.

Checkpoint format (``params.npz``): an uncompressed NumPy ``.npz`` archive,
readable without pickle. Each parameter array is stored under the key
``<layer>/<name>`` (for example ``hidden_0/kernel`` of shape ``(in, out)``,
``hidden_0/bias`` of shape ``(out,)``), and the key ``__meta__`` contains a
0-d unicode array with a JSON object: ``format``, ``format_version``,
``lmcpipe_version``, ``jax_version``, ``backend``, ``spec`` (the
:class:`~lmcpipe.spec.TrainSpec`), ``spec_hash``, ``seed``, ``layers`` (layer
names in forward order) and ``status``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmcpipe import __version__
from lmcpipe.client import current_umask

CHECKPOINT_FORMAT = "lmcpipe-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
META_KEY = "__meta__"


class InputError(ValueError):
    """A file given to lmcpipe is missing, corrupt or of the wrong kind."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    A symbolic link is followed, so the link stays and its target is
    replaced. A target that exists but is not a regular file (``/dev/stdout``,
    a named pipe) gets the finished file's bytes copied into it, because
    renaming onto it would replace the device or pipe itself, and Parquet
    writers need a seekable file. The file gets the permissions of a newly
    created file under the process's umask, not ``mkstemp``'s 0600.
    """
    path = Path(path)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)  # follows symbolic links
    except FileNotFoundError:
        regular = None
    if regular is False:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        temporary = Path(temporary)
        try:
            yield temporary
            with open(temporary, "rb") as source, open(path, "wb") as sink:
                shutil.copyfileobj(source, sink)
        finally:
            temporary.unlink(missing_ok=True)
        return
    if regular and path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def table_metadata(spec_hash: str | None = None, **extra: str) -> dict[str, str]:
    """Return schema metadata recorded in every lmcpipe table.

    Keys: ``lmcpipe.version``, ``lmcpipe.jax_version``, ``lmcpipe.backend``
    (JAX's default backend where the writing process computed with JAX, else
    ``numpy``), ``lmcpipe.config_hash`` (the hash of the training settings
    the table derives from) and any ``extra`` values under ``lmcpipe.<key>``.
    """
    metadata = {
        "lmcpipe.version": __version__,
        "lmcpipe.jax_version": _package_version("jax"),
        "lmcpipe.backend": _backend(),
    }
    if spec_hash is not None:
        metadata["lmcpipe.config_hash"] = spec_hash
    metadata.update({f"lmcpipe.{key}": str(value) for key, value in extra.items()})
    return metadata


def settings_hash(settings: str) -> str:
    """Return the first 16 hex digits of the SHA-256 of a canonical settings string.

    Tables that no single training spec determines (bounds, convergence)
    record this hash of their own settings as ``lmcpipe.config_hash``.
    """
    import hashlib

    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _backend() -> str:
    """Return JAX's default backend if this process computed with JAX, else ``numpy``.

    Importing JAX is not enough: a step run by the worker (lmcpipe.worker)
    has JAX imported without using it, and asking for the backend would
    start one (and take GPU memory).
    """
    import sys

    if "jax" not in sys.modules:
        return "numpy"
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # NOTE: private JAX API; without it, report the default backend
        return sys.modules["jax"].default_backend()
    if not backends_are_initialized():
        return "numpy"
    return sys.modules["jax"].default_backend()


def write_table(table: pa.Table, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write ``table`` to Parquet atomically, merging ``metadata`` into its schema."""
    merged = dict(table.schema.metadata or {})
    merged.update({key.encode(): value.encode() for key, value in metadata.items()})
    table = table.replace_schema_metadata(merged)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet table, turning a missing or corrupt file into :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: table not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"{path}: not a readable Parquet table ({error})") from None


def metadata_of(table: pa.Table) -> dict[str, str]:
    """Return the ``lmcpipe.*`` schema metadata of a table as strings."""
    raw = table.schema.metadata or {}
    return {
        key.decode(): value.decode()
        for key, value in raw.items()
        if key.startswith(b"lmcpipe.")
    }


def save_checkpoint(
    path: str | os.PathLike, params: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> None:
    """Save a two-level parameter tree and its metadata in the checkpoint format."""
    arrays = {
        f"{layer}/{name}": np.asarray(value)
        for layer, leaves in params.items()
        for name, value in leaves.items()
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "lmcpipe_version": __version__,
        "layers": list(params),
        **meta,
    }
    arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(params, meta)``: the parameter tree with layers in forward order,
        and the metadata object.

    Raises:
        InputError: the file is missing, not an archive, truncated, or not an
            lmcpipe checkpoint. Pickled objects are never loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: not a readable checkpoint ({error})") from None
    if META_KEY not in arrays:
        raise InputError(f"{path}: not an lmcpipe checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: checkpoint metadata is not JSON ({error})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    params: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in meta["layers"]}
    for key, value in arrays.items():
        layer, _, name = key.partition("/")
        if layer not in params or not name:
            raise InputError(f"{path}: unexpected array {key!r} in checkpoint")
        params[layer][name] = value
    return params, meta
