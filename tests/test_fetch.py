"""Dataset download with a fake downloader that serves bytes from memory."""

import gzip
import hashlib
import io
import tarfile

import numpy as np
import pytest

import lmcpipe.fetch
from lmcpipe.cli import build_parser, main
from lmcpipe.data import load_dataset
from lmcpipe.fetch import SOURCES, RemoteFile, fetch_dataset
from lmcpipe.io import InputError
from test_data import cifar_bytes, idx_bytes

BASE = "https://example.invalid/"


def remote(name: str, data: bytes, members=()) -> RemoteFile:
    return RemoteFile(BASE + name, name, len(data), hashlib.sha256(data).hexdigest(), tuple(members))


class MemoryDownloader:
    """Serve fixed bytes per URL and record every URL requested."""

    def __init__(self, bodies: dict[str, bytes]):
        self.bodies = bodies
        self.requested: list[str] = []

    def __call__(self, url, handle):
        self.requested.append(url)
        handle.write(self.bodies[url])


def idx_files(seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 4, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 2, dtype=np.uint8),
    }
    return {name: gzip.compress(idx_bytes(array)) for name, array in arrays.items()}


@pytest.fixture
def fake_mnist(monkeypatch):
    """Record the digests of in-memory MNIST files in place of the real ones."""
    files = idx_files()
    monkeypatch.setitem(SOURCES, "mnist", tuple(remote(name, data) for name, data in files.items()))
    return files


def test_recorded_sources_are_complete():
    assert set(SOURCES) == {"mnist", "fashion_mnist", "cifar10"}
    for files in SOURCES.values():
        for file in files:
            assert len(file.sha256) == 64
            assert int(file.sha256, 16) >= 0
            assert file.size > 0



def test_cli_fetch_choices_match_sources():
    for name in SOURCES:
        assert build_parser().parse_args(["data", "fetch", name]).name == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "fetch", "digits"])


def test_fetch_right_hash_writes_files(tmp_path, fake_mnist):
    downloader = MemoryDownloader({BASE + name: data for name, data in fake_mnist.items()})
    written = fetch_dataset("mnist", tmp_path / "mnist", download=downloader)
    assert sorted(path.name for path in written) == sorted(fake_mnist)
    for name, data in fake_mnist.items():
        assert (tmp_path / "mnist" / name).read_bytes() == data
    assert sorted(path.name for path in (tmp_path / "mnist").iterdir()) == sorted(fake_mnist)
    dataset = load_dataset("mnist", data_directory=str(tmp_path / "mnist"))
    assert dataset.x_train.shape == (4, 784)


def test_fetch_skips_verified_files(tmp_path, fake_mnist):
    bodies = {BASE + name: data for name, data in fake_mnist.items()}
    fetch_dataset("mnist", tmp_path, download=MemoryDownloader(bodies))
    again = MemoryDownloader(bodies)
    fetch_dataset("mnist", tmp_path, download=again)
    assert again.requested == []


def test_fetch_wrong_hash_names_file_and_leaves_nothing(tmp_path, fake_mnist):
    bodies = {BASE + name: data for name, data in fake_mnist.items()}
    corrupt = bytearray(bodies[BASE + "t10k-images-idx3-ubyte.gz"])
    corrupt[100] ^= 0xFF
    bodies[BASE + "t10k-images-idx3-ubyte.gz"] = bytes(corrupt)
    target = tmp_path / "mnist"
    with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte\.gz: SHA-256 mismatch"):
        fetch_dataset("mnist", target, download=MemoryDownloader(bodies))
    assert list(target.iterdir()) == []


def test_fetch_wrong_size_names_file(tmp_path, fake_mnist):
    bodies = {BASE + name: data for name, data in fake_mnist.items()}
    bodies[BASE + "train-labels-idx1-ubyte.gz"] += b"extra"
    with pytest.raises(InputError, match=r"train-labels-idx1-ubyte\.gz: downloaded \d+ bytes"):
        fetch_dataset("mnist", tmp_path, download=MemoryDownloader(bodies))
    assert list(tmp_path.iterdir()) == []


def test_fetch_failed_download_leaves_nothing(tmp_path, fake_mnist):
    bodies = {BASE + name: data for name, data in fake_mnist.items()}

    def failing(url, handle):
        if url.endswith("t10k-labels-idx1-ubyte.gz"):
            handle.write(b"partial")
            raise OSError("connection reset")
        handle.write(bodies[url])

    with pytest.raises(OSError, match="connection reset"):
        fetch_dataset("mnist", tmp_path, download=failing)
    assert list(tmp_path.iterdir()) == []


def test_fetch_keeps_existing_files_on_failure(tmp_path, fake_mnist):
    existing = tmp_path / "train-images-idx3-ubyte.gz"
    existing.write_bytes(b"old")
    bodies = {BASE + name: b"wrong" for name in fake_mnist}
    with pytest.raises(InputError, match="downloaded 5 bytes"):
        fetch_dataset("mnist", tmp_path, download=MemoryDownloader(bodies))
    assert existing.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == [existing.name]


def cifar_tarball(per_file=2) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in [f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin",
                                                                          "batches.meta.txt"]:
            labels = rng.integers(0, 10, per_file, dtype=np.uint8)
            data = cifar_bytes(labels, rng.integers(0, 256, (per_file, 3072), dtype=np.uint8))
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_fetch_cifar10_unpacks_binary_files(tmp_path, monkeypatch):
    data = cifar_tarball()
    members = SOURCES["cifar10"][0].members
    monkeypatch.setitem(SOURCES, "cifar10", (remote("cifar-10-binary.tar.gz", data, members),))
    downloader = MemoryDownloader({BASE + "cifar-10-binary.tar.gz": data})
    fetch_dataset("cifar10", tmp_path, download=downloader)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin"])
    dataset = load_dataset("cifar10", data_directory=str(tmp_path))
    assert dataset.x_train.shape == (10, 3072)
    assert dataset.x_test.shape == (2, 3072)


def test_fetch_cifar10_missing_member_leaves_nothing(tmp_path, monkeypatch):
    data = cifar_tarball()
    members = SOURCES["cifar10"][0].members + ("cifar-10-batches-bin/extra.bin",)
    monkeypatch.setitem(SOURCES, "cifar10", (remote("cifar-10-binary.tar.gz", data, members),))
    downloader = MemoryDownloader({BASE + "cifar-10-binary.tar.gz": data})
    with pytest.raises(InputError, match="archive has no member cifar-10-batches-bin/extra.bin"):
        fetch_dataset("cifar10", tmp_path, download=downloader)
    assert list(tmp_path.iterdir()) == []


def test_fetch_unknown_dataset_rejected(tmp_path):
    with pytest.raises(ValueError, match="no download is recorded for dataset 'digits'"):
        fetch_dataset("digits", tmp_path, download=MemoryDownloader({}))


def test_cli_fetch_wrong_hash_is_one_line_error(tmp_path, fake_mnist, monkeypatch, capsys):
    bodies = {BASE + name: b"x" + data[1:] for name, data in fake_mnist.items()}
    monkeypatch.setattr(lmcpipe.fetch, "download_url", MemoryDownloader(bodies))
    assert main(["data", "fetch", "mnist", "--to", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "lmcpipe data fetch: error: train-images-idx3-ubyte.gz: SHA-256 mismatch" in err
    assert "Traceback" not in err
    assert list((tmp_path / "m").iterdir()) == []
