import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from lmcpipe.data import (
    IDX_FILES,
    check_arrays,
    data_spec_fields,
    load_dataset,
    load_for_spec,
    require_dataset,
)
from lmcpipe.formats import read_cifar_batch, read_idx
from lmcpipe.io import InputError
from lmcpipe.spec import TrainSpec

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode ``array`` in the IDX format: magic number, big-endian sizes, values."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_file(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_dataset(directory: Path, n_train=12, n_test=5, compress=True, seed=0):
    """Write the four IDX files of a tiny MNIST-like dataset; return its arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    # Full range in the training images, so that scaling is checked at both ends.
    arrays["train_images"][0, 0, :2] = [0, 255]
    suffix = ".gz" if compress else ""
    for role, name in IDX_FILES.items():
        write_file(directory / f"{name}{suffix}", idx_bytes(arrays[role]))
    return arrays


def cifar_bytes(labels: np.ndarray, images: np.ndarray) -> bytes:
    """Encode records of one label byte followed by 3072 pixel bytes."""
    records = np.concatenate([labels[:, None], images.reshape(len(labels), -1)], axis=1)
    return records.astype(np.uint8).tobytes()


def make_cifar_dataset(directory: Path, per_file=3, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    names = [f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        (directory / name).write_bytes(cifar_bytes(labels, images))
        batches[name] = (labels, images)
    return batches


def test_digits_split_and_scaling(digits):
    assert digits.x_train.shape == (1437, 64)
    assert digits.x_test.shape == (360, 64)
    assert digits.x_train.dtype == np.float32
    assert digits.x_train.min() == 0.0
    assert digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_digits_split_is_fixed():
    first = load_dataset("digits")
    second = load_dataset("digits")
    np.testing.assert_array_equal(first.x_test, second.x_test)
    other = load_dataset("digits", split_seed=1)
    assert not np.array_equal(first.x_test, other.x_test)


def test_unknown_dataset_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'mnist2'"):
        load_dataset("mnist2")


def test_check_arrays_rejects_label_out_of_range():
    with pytest.raises(ValueError, match="labels must lie in"):
        check_arrays("toy", np.zeros((2, 3), np.float32), np.array([0, 10]), 10)


def test_check_arrays_rejects_count_mismatch():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        check_arrays("toy", np.zeros((3, 3), np.float32), np.array([0, 1]), 10)


def test_check_arrays_rejects_unscaled_inputs():
    with pytest.raises(ValueError, match="scaled"):
        check_arrays("toy", np.full((2, 3), 255.0, np.float32), np.array([0, 1]), 10)


# IDX files: MNIST and Fashion-MNIST.


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_dataset_read_back_exactly(tmp_path, name, compress):
    arrays = make_idx_dataset(tmp_path, compress=compress)
    dataset = load_dataset(name, data_directory=str(tmp_path))
    assert dataset.name == name
    assert dataset.n_classes == 10
    assert dataset.x_train.shape == (12, 784)
    assert dataset.x_test.shape == (5, 784)
    assert dataset.x_train.dtype == np.float32
    assert dataset.y_train.dtype == np.int32
    np.testing.assert_array_equal(dataset.x_train * 255, arrays["train_images"].reshape(12, 784))
    np.testing.assert_array_equal(dataset.x_test * 255, arrays["test_images"].reshape(5, 784))
    np.testing.assert_array_equal(dataset.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(dataset.y_test, arrays["test_labels"])
    assert dataset.x_train.min() == 0.0
    assert dataset.x_train.max() == 1.0


def test_idx_reader_handles_other_types(tmp_path):
    values = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    path = write_file(tmp_path / "values.idx", idx_bytes(values, type_code=0x0C))
    read = read_idx(path)
    np.testing.assert_array_equal(read, values)
    assert read.dtype == np.int32


def test_idx_plain_file_preferred_over_gz(tmp_path):
    make_idx_dataset(tmp_path, compress=True, seed=0)
    plain = make_idx_dataset(tmp_path, compress=False, seed=1)
    dataset = load_dataset("mnist", data_directory=str(tmp_path))
    np.testing.assert_array_equal(dataset.y_train, plain["train_labels"])


def test_idx_truncated_file_rejected(tmp_path):
    make_idx_dataset(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="train-images-idx3-ubyte: truncated IDX file"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_truncated_header_rejected(tmp_path):
    make_idx_dataset(tmp_path, compress=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte: truncated IDX file"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_truncated_gzip_rejected(tmp_path):
    make_idx_dataset(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte\.gz: truncated gzip file"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_trailing_bytes_rejected(tmp_path):
    make_idx_dataset(tmp_path, compress=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(InputError, match="train-labels-idx1-ubyte: 2 unexpected bytes"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_wrong_magic_rejected(tmp_path):
    arrays = make_idx_dataset(tmp_path, compress=True)
    # Labels written where the images belong: magic number 0x00000801.
    write_file(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(arrays["train_labels"]))
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte\.gz: wrong IDX magic number "
                                         r"0x00000801, expected 0x00000803"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_invalid_magic_rejected(tmp_path):
    path = write_file(tmp_path / "junk.idx", b"PK\x03\x04" + bytes(20))
    with pytest.raises(InputError, match=r"junk\.idx: wrong IDX magic number 0x504B0304"):
        read_idx(path)


def test_idx_count_mismatch_rejected(tmp_path):
    arrays = make_idx_dataset(tmp_path, compress=True)
    write_file(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(arrays["train_labels"][:-1]))
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte\.gz has 12 images but "
                                         r".*train-labels-idx1-ubyte\.gz has 11 labels"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_wrong_image_size_rejected(tmp_path):
    make_idx_dataset(tmp_path, compress=False)
    write_file(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 32, 32), np.uint8)))
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte: images of 32x32 pixels, expected 28x28"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_idx_label_out_of_range_rejected(tmp_path):
    arrays = make_idx_dataset(tmp_path, compress=False)
    labels = arrays["test_labels"].copy()
    labels[2] = 10
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(InputError, match=r"t10k-labels-idx1-ubyte: label 10 outside \[0, 10\)"):
        load_dataset("mnist", data_directory=str(tmp_path))


def test_missing_dataset_names_folder_and_fetch(tmp_path):
    folder = tmp_path / "nothing"
    with pytest.raises(InputError) as raised:
        load_dataset("mnist", data_directory=str(folder))
    message = str(raised.value)
    assert f"{folder} lacks train-images-idx3-ubyte[.gz]" in message
    assert f"lmcpipe data fetch mnist --to {folder}" in message


def test_missing_dataset_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"data/mnist lacks .*lmcpipe data fetch mnist --to data/mnist"):
        require_dataset("mnist")


def test_missing_fashion_mnist_lists_every_folder(tmp_path, monkeypatch):
    import lmcpipe.data

    monkeypatch.setitem(lmcpipe.data.SYSTEM_DIRECTORIES, "fashion_mnist", (tmp_path / "system",))
    with pytest.raises(InputError) as raised:
        require_dataset("fashion_mnist", directory=str(tmp_path / "mine"))
    message = str(raised.value)
    assert f"{tmp_path / 'mine'} lacks" in message
    assert f"{tmp_path / 'system'} lacks" in message
    assert f"lmcpipe data fetch fashion_mnist --to {tmp_path / 'mine'}" in message


def test_fashion_mnist_found_in_system_folder(tmp_path, monkeypatch):
    import lmcpipe.data

    arrays = make_idx_dataset(tmp_path / "system")
    monkeypatch.setitem(lmcpipe.data.SYSTEM_DIRECTORIES, "fashion_mnist", (tmp_path / "system",))
    require_dataset("fashion_mnist", directory=str(tmp_path / "empty"))
    dataset = load_dataset("fashion_mnist", data_directory=str(tmp_path / "empty"))
    np.testing.assert_array_equal(dataset.y_test, arrays["test_labels"])


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_files(tmp_path):
    dataset = load_dataset("fashion_mnist", data_directory=str(tmp_path / "empty"))
    assert dataset.x_train.shape == (60000, 784)
    assert dataset.x_test.shape == (10000, 784)
    assert np.bincount(dataset.y_train).tolist() == [6000] * 10
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
    assert dataset.x_train.max() == 1.0


# CIFAR-10 binary version.


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar10_read_back_exactly(tmp_path, subfolder):
    batches = make_cifar_dataset(tmp_path / subfolder)
    dataset = load_dataset("cifar10", data_directory=str(tmp_path))
    train = [batches[f"data_batch_{index}.bin"] for index in range(1, 6)]
    assert dataset.x_train.shape == (15, 3072)
    assert dataset.x_test.shape == (3, 3072)
    np.testing.assert_array_equal(dataset.y_train, np.concatenate([labels for labels, _ in train]))
    np.testing.assert_array_equal(
        dataset.x_train * 255, np.concatenate([images.reshape(3, -1) for _, images in train])
    )
    labels, images = batches["test_batch.bin"]
    np.testing.assert_array_equal(dataset.y_test, labels)
    np.testing.assert_array_equal(dataset.x_test * 255, images.reshape(3, -1))
    # Channel-major order: the first 1024 inputs are the red plane.
    np.testing.assert_array_equal(dataset.x_test[0, :1024] * 255, images[0, 0].ravel())


def test_cifar10_truncated_file_rejected(tmp_path):
    make_cifar_dataset(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(InputError, match=r"data_batch_3\.bin: truncated CIFAR-10 file \(9218 bytes"):
        load_dataset("cifar10", data_directory=str(tmp_path))


def test_cifar10_empty_file_rejected(tmp_path):
    make_cifar_dataset(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"test_batch\.bin: empty file"):
        load_dataset("cifar10", data_directory=str(tmp_path))


def test_cifar10_bad_label_rejected(tmp_path):
    path = tmp_path / "batch.bin"
    path.write_bytes(cifar_bytes(np.array([3, 200], np.uint8), np.zeros((2, 3072), np.uint8)))
    with pytest.raises(InputError, match=r"batch\.bin: record 1 has label 200"):
        read_cifar_batch(path)


def test_cifar10_missing_file_named(tmp_path):
    make_cifar_dataset(tmp_path)
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(InputError, match=r"lacks data_batch_5\.bin.*lmcpipe data fetch cifar10"):
        load_dataset("cifar10", data_directory=str(tmp_path))


# MNIST-1D, generated offline.


def test_mnist1d_generated_and_scaled():
    pytest.importorskip("mnist1d")
    dataset = load_dataset("mnist1d", mnist1d_seed=3)
    assert dataset.x_train.shape == (4000, 40)
    assert dataset.x_test.shape == (1000, 40)
    assert dataset.x_train.dtype == np.float32
    assert min(dataset.x_train.min(), dataset.x_test.min()) == 0.0
    assert max(dataset.x_train.max(), dataset.x_test.max()) == 1.0
    assert set(np.unique(dataset.y_train)) == set(range(10))


def test_mnist1d_seed_controls_data():
    pytest.importorskip("mnist1d")
    first = load_dataset("mnist1d", mnist1d_seed=3)
    again = load_dataset("mnist1d", mnist1d_seed=3)
    other = load_dataset("mnist1d", mnist1d_seed=4)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert not np.array_equal(first.x_train, other.x_train)


def test_mnist1d_keeps_global_random_state():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    random.seed(456)
    expected_numpy = np.random.random(3)
    expected_python = random.random()
    np.random.seed(123)
    random.seed(456)
    load_dataset("mnist1d", mnist1d_seed=3)
    np.testing.assert_array_equal(np.random.random(3), expected_numpy)
    assert random.random() == expected_python


# A user's .npz archive.


def write_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def npz_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 0, 1, 2]),
        "x_test": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
        "y_test": np.array([2, 1, 0]),
    }


def test_npz_read_back_exactly(tmp_path):
    arrays = npz_arrays()
    path = write_npz(tmp_path / "mine.npz", **arrays)
    dataset = load_dataset("npz", npz_path=str(path))
    assert dataset.n_classes == 3
    assert dataset.x_train.shape == (6, 16)
    np.testing.assert_array_equal(dataset.x_train * 255, arrays["x_train"].reshape(6, 16))
    np.testing.assert_array_equal(dataset.x_test * 255, arrays["x_test"].reshape(3, 16))
    np.testing.assert_array_equal(dataset.y_train, arrays["y_train"])
    np.testing.assert_array_equal(dataset.y_test, arrays["y_test"])


def test_npz_float_inputs_kept(tmp_path):
    arrays = npz_arrays()
    arrays["x_train"] = np.linspace(0, 1, 12).reshape(6, 2)
    arrays["x_test"] = np.full((3, 2), 0.5)
    dataset = load_dataset("npz", npz_path=str(write_npz(tmp_path / "f.npz", **arrays)))
    np.testing.assert_allclose(dataset.x_train, arrays["x_train"].astype(np.float32))


def test_npz_unscaled_floats_rejected(tmp_path):
    arrays = npz_arrays()
    arrays["x_train"] = np.full((6, 2), 3.0)
    arrays["x_test"] = np.zeros((3, 2))
    path = write_npz(tmp_path / "f.npz", **arrays)
    with pytest.raises(InputError, match=r"f\.npz: train split: inputs must be finite and scaled"):
        load_dataset("npz", npz_path=str(path))


def test_npz_missing_array_rejected(tmp_path):
    arrays = npz_arrays()
    del arrays["y_test"]
    path = write_npz(tmp_path / "m.npz", **arrays)
    with pytest.raises(InputError, match=r"m\.npz: missing array\(s\) \['y_test'\]"):
        load_dataset("npz", npz_path=str(path))


def test_npz_count_mismatch_rejected(tmp_path):
    arrays = npz_arrays()
    arrays["y_train"] = arrays["y_train"][:5]
    path = write_npz(tmp_path / "c.npz", **arrays)
    with pytest.raises(InputError, match=r"c\.npz: train split: 6 inputs but 5 labels"):
        load_dataset("npz", npz_path=str(path))


def test_npz_object_array_not_unpickled(tmp_path):
    arrays = npz_arrays()
    arrays["y_train"] = np.array([0, 1, 2, 0, 1, None], dtype=object)
    path = write_npz(tmp_path / "o.npz", **arrays)
    with pytest.raises(InputError, match=r"o\.npz: not a readable \.npz archive"):
        load_dataset("npz", npz_path=str(path))


@pytest.mark.parametrize("content", [b"", b"not an archive at all", b"PK\x03\x04 truncated"])
def test_npz_corrupt_file_rejected(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"bad\.npz: not a readable \.npz archive"):
        load_dataset("npz", npz_path=str(path))


def test_npz_single_array_rejected(tmp_path):
    path = tmp_path / "single.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(InputError, match=r"single\.npy: a single \.npy array"):
        load_dataset("npz", npz_path=str(path))


def test_npz_needs_path(tmp_path):
    with pytest.raises(ValueError, match="data.npz_path"):
        load_dataset("npz")
    with pytest.raises(InputError, match=r"absent\.npz: dataset archive not found"):
        require_dataset("npz", npz_path=str(tmp_path / "absent.npz"))


# Loader options carried by the training spec.


def test_spec_fields_only_for_dataset_options():
    assert data_spec_fields("digits", directory="x", mnist1d_seed=1, npz_path="p") == {}
    assert data_spec_fields("mnist") == {"data_directory": "data/mnist"}
    assert data_spec_fields("cifar10", directory="/d") == {"data_directory": "/d"}
    assert data_spec_fields("mnist1d") == {"mnist1d_seed": 42}
    assert data_spec_fields("mnist1d", mnist1d_seed=7) == {"mnist1d_seed": 7}
    assert data_spec_fields("npz", npz_path="a.npz") == {"npz_path": "a.npz"}
    with pytest.raises(ValueError, match="data.npz_path"):
        data_spec_fields("npz")


def test_spec_options_reach_loader(tmp_path):
    arrays = make_idx_dataset(tmp_path / "files")
    spec = TrainSpec("mnist", 1, 8, 0.1, epochs=1, batch_size=4,
                     **data_spec_fields("mnist", directory=str(tmp_path / "files")))
    dataset = load_for_spec(TrainSpec.from_json(spec.to_json()))
    np.testing.assert_array_equal(dataset.y_train, arrays["train_labels"])
