"""Readers of raw dataset files: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary.

Both readers parse with NumPy alone, and every problem with a file (missing,
truncated, wrong magic number, unexpected dimensions) raises
:class:`lmcpipe.io.InputError` with the file's path and the problem.

IDX: a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order.
MNIST images have magic number 0x00000803 (uint8, 3 dimensions) and labels
0x00000801 (uint8, 1 dimension).

CIFAR-10 binary version: a file of 3073-byte records, each one label byte
followed by 3072 pixel bytes, the 1024 red values of the 32x32 image in row
order, then the green, then the blue.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from lmcpipe.io import InputError

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR_IMAGE_BYTES = 3 * 32 * 32
CIFAR_RECORD_BYTES = 1 + CIFAR_IMAGE_BYTES


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """Return the contents of ``path``, decompressed when its name ends in ``.gz``."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except EOFError:
        raise InputError(f"{path}: truncated gzip file (compressed stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise InputError(f"{path}: not a valid gzip file ({error})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read file ({error.strerror or error})") from None


def parse_idx(data: bytes, path: str | os.PathLike) -> np.ndarray:
    """Parse the bytes of an IDX file. ``path`` is used only in error messages."""
    if len(data) < 4:
        raise InputError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than the 4-byte magic number)")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise InputError(
            f"{path}: wrong IDX magic number 0x{magic:08X}; expected two zero bytes, "
            f"a type code in {{{', '.join(f'0x{code:02X}' for code in IDX_DTYPES)}}} "
            "and at least one dimension"
        )

    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(
            f"{path}: truncated IDX file ({len(data)} bytes, shorter than the "
            f"{header}-byte header of {ndim} dimensions)"
        )
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]

    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise InputError(
            f"{path}: truncated IDX file ({len(data)} bytes, but the header "
            f"declares shape {shape} of {dtype.name}, {expected} bytes in all)"
        )
    if len(data) > expected:
        raise InputError(
            f"{path}: {len(data) - expected} unexpected bytes after the data of "
            f"shape {shape} declared in the IDX header"
        )

    values = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain, or gzip-compressed when named ``*.gz``).

    Args:
        path: the file.
        magic: expected magic number (for example 0x00000803 for MNIST
            images), or ``None`` to accept any valid one.
    """
    data = read_file_bytes(path)
    if magic is not None and len(data) >= 4 and int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big")
        raise InputError(f"{path}: wrong IDX magic number 0x{found:08X}, expected 0x{magic:08X}")
    return parse_idx(data, path)


def read_idx_images_and_labels(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    image_shape: tuple[int, int],
    n_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split stored as an IDX image file and an IDX label file.

    Returns:
        ``(x, y)``: float32 images flattened to ``(n, rows * cols)`` with
        pixels divided by 255, and int32 labels of shape ``(n,)``.
    """
    images = read_idx(images_path, magic=0x00000803)
    labels = read_idx(labels_path, magic=0x00000801)
    if images.shape[1:] != tuple(image_shape):
        raise InputError(
            f"{images_path}: images of {images.shape[1]}x{images.shape[2]} pixels, "
            f"expected {image_shape[0]}x{image_shape[1]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise InputError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels; the counts must match"
        )
    if labels.size and labels.max() >= n_classes:
        raise InputError(f"{labels_path}: label {labels.max()} outside [0, {n_classes})")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int32)


def read_cifar_batch(path: str | os.PathLike, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 binary version.

    Returns:
        ``(x, y)``: float32 images of shape ``(n, 3072)`` in the file's
        channel-major order with pixels divided by 255, and int32 labels.
    """
    data = read_file_bytes(path)
    if len(data) == 0:
        raise InputError(f"{path}: empty file; expected {CIFAR_RECORD_BYTES}-byte CIFAR-10 records")
    if len(data) % CIFAR_RECORD_BYTES:
        raise InputError(
            f"{path}: truncated CIFAR-10 file ({len(data)} bytes is not a whole "
            f"number of {CIFAR_RECORD_BYTES}-byte records)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0]
    if labels.max() >= n_classes:
        bad = int(np.argmax(labels >= n_classes))
        raise InputError(
            f"{path}: record {bad} has label {labels[bad]}, outside [0, {n_classes}); "
            "not a CIFAR-10 binary file"
        )
    x = records[:, 1:].astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int32)
