"""Download of the public datasets, verified against recorded SHA-256 digests.

``lmcpipe data fetch NAME --to DIR`` downloads the files of ``mnist``,
``fashion_mnist`` or ``cifar10`` into ``DIR``. Every download goes to a
temporary file in ``DIR`` and is checked against the size and SHA-256 digest
recorded below. The files get their final names only after every file of the
dataset has passed, so a failed fetch leaves no new or partial file behind.
For ``cifar10`` the verified tarball is unpacked into the six ``.bin``
files of the binary version and then deleted.

The download function is a parameter, so tests serve bytes from memory and
never touch the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from lmcpipe.io import InputError

log = logging.getLogger(__name__)

Downloader = Callable[[str, BinaryIO], None]
DOWNLOAD_TIMEOUT_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to download.

    Attributes:
        url: where it is downloaded from.
        name: file name in the destination folder.
        size: expected size in bytes.
        sha256: expected SHA-256 digest, as lowercase hex.
        members: names of the tar archive members to unpack into the
            destination folder under their base names, after which the
            archive is deleted. Empty for a file that is kept as it is.
    """

    url: str
    name: str
    size: int
    sha256: str
    members: tuple[str, ...] = ()


# Sizes and SHA-256 digests as published in the tensorflow/datasets
# repository, files tensorflow_datasets/url_checksums/mnist.txt,
# fashion_mnist.txt and cifar10.txt, for exactly these URLs.
# NOTE: Debian's dataset-fashion-mnist package ships the same four IDX files
# recompressed without the file name in the gzip header (24 or 23 bytes
# shorter), so its .gz files have other digests than these downloads.
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": (
        RemoteFile(_MNIST_URL + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", 9912422,
                   "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        RemoteFile(_MNIST_URL + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", 28881,
                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        RemoteFile(_MNIST_URL + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", 1648877,
                   "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        RemoteFile(_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 4542,
                   "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ),
    "fashion_mnist": (
        RemoteFile(_FASHION_MNIST_URL + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz",
                   26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        RemoteFile(_FASHION_MNIST_URL + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz",
                   29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        RemoteFile(_FASHION_MNIST_URL + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                   4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        RemoteFile(_FASHION_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                   5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ),
    "cifar10": (
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "cifar-10-binary.tar.gz",
            170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            members=tuple(
                f"cifar-10-batches-bin/{name}"
                for name in [*(f"data_batch_{index}.bin" for index in range(1, 6)), "test_batch.bin"]
            ),
        ),
    ),
}


def download_url(url: str, handle: BinaryIO) -> None:
    """Write the body of an HTTP(S) response for ``url`` to ``handle``."""
    from urllib.request import urlopen

    with urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        shutil.copyfileobj(response, handle, length=1 << 20)


def sha256_of(path: str | os.PathLike) -> str:
    """Return the SHA-256 digest of a file as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, remote: RemoteFile) -> None:
    size = path.stat().st_size
    if size != remote.size:
        raise InputError(
            f"{remote.name}: downloaded {size} bytes from {remote.url}, expected "
            f"{remote.size}; the download is incomplete or the file has changed"
        )
    digest = sha256_of(path)
    if digest != remote.sha256:
        raise InputError(
            f"{remote.name}: SHA-256 mismatch for the download from {remote.url}: "
            f"got {digest}, expected {remote.sha256}; the file is corrupt or has changed"
        )


def _temporary_file(directory: Path, name: str) -> Path:
    handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    os.close(handle)
    return Path(path)


def _unpack(archive_path: Path, remote: RemoteFile, directory: Path, staged: list[Path]) -> dict[str, Path]:
    """Copy the named members of a verified tar archive to temporary files."""
    unpacked: dict[str, Path] = {}
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            for member_name in remote.members:
                try:
                    member = archive.getmember(member_name)
                except KeyError:
                    raise InputError(f"{remote.name}: archive has no member {member_name}") from None
                if not member.isfile():
                    raise InputError(f"{remote.name}: archive member {member_name} is not a regular file")
                final_name = Path(member_name).name
                temporary = _temporary_file(directory, final_name)
                staged.append(temporary)
                source = archive.extractfile(member)
                with source, open(temporary, "wb") as target:
                    shutil.copyfileobj(source, target, length=1 << 20)
                unpacked[final_name] = temporary
    except (tarfile.TarError, EOFError) as error:
        raise InputError(f"{remote.name}: not a readable tar archive ({error})") from None
    return unpacked


def fetch_dataset(
    name: str, directory: str | os.PathLike, download: Downloader | None = None
) -> list[Path]:
    """Download dataset ``name`` into ``directory`` and verify every file.

    Files already in ``directory`` with the recorded digest are kept and not
    downloaded again. Archives are always downloaded, because only the
    archive's digest is recorded.

    Args:
        name: a key of :data:`SOURCES`.
        directory: destination folder, created if missing.
        download: function that writes the body at a URL to a binary file
            handle; ``None`` means :func:`download_url`.

    Returns:
        The paths of the dataset files in ``directory``.

    Raises:
        InputError: a download has the wrong size or digest, or an archive
            lacks a member; nothing is written to ``directory`` then.
        ValueError: ``name`` is not a downloadable dataset.
        OSError: a download or a write failed.
    """
    if name not in SOURCES:
        raise ValueError(f"no download is recorded for dataset {name!r}; downloadable: {sorted(SOURCES)}")
    if download is None:
        download = download_url
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    ready: dict[str, Path] = {}
    already_present: list[Path] = []
    try:
        for remote in SOURCES[name]:
            final = directory / remote.name
            if not remote.members and final.is_file() and sha256_of(final) == remote.sha256:
                log.info("%s: present with the recorded SHA-256; not downloaded again", final)
                already_present.append(final)
                continue
            temporary = _temporary_file(directory, remote.name)
            staged.append(temporary)
            log.info("downloading %s", remote.url)
            with open(temporary, "wb") as handle:
                download(remote.url, handle)
            _verify(temporary, remote)
            log.info("%s: SHA-256 verified", remote.name)
            if remote.members:
                ready.update(_unpack(temporary, remote, directory, staged))
            else:
                ready[remote.name] = temporary
        for final_name, temporary in ready.items():
            os.replace(temporary, directory / final_name)
    finally:
        for temporary in staged:
            temporary.unlink(missing_ok=True)
    written = [directory / final_name for final_name in ready]
    for path in written:
        log.info("wrote %s", path)
    return already_present + written
