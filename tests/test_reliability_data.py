"""Corrupt and crafted dataset files (issue 11): one line naming the file, never a traceback, a
silent shortfall, or code run by a pickle."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bnnbench.data import create_data
from bnnbench.data.cifar import OFFICIAL_MD5
from bnnbench.errors import BnnbenchError
from tests.test_data import write_cifar, write_idx, write_mnist


def setup_error(dm) -> str:
    with pytest.raises(BnnbenchError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- MNIST's idx files ---------------------------------------------------------------------------

def mnist(root: Path):
    return create_data("mnist", root=str(root), val_size=10)


RAW = Path("MNIST/raw")


def corrupt_zero_bytes(raw: Path) -> Path:
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    return raw / "train-images-idx3-ubyte"


def corrupt_truncate(raw: Path) -> Path:
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def corrupt_random(raw: Path) -> Path:
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return path


def corrupt_label(raw: Path) -> Path:
    write_idx(raw / "train-labels-idx1-ubyte", np.array([3] * 39 + [12], dtype=np.uint8))
    return raw / "train-labels-idx1-ubyte"


def corrupt_count(raw: Path) -> Path:
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(11, dtype=np.uint8) % 10)
    return raw / "t10k-labels-idx1-ubyte"


def corrupt_shape(raw: Path) -> Path:
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((40, 32, 32), dtype=np.uint8))
    return raw / "train-images-idx3-ubyte"


@pytest.mark.parametrize("corrupt, message", [
    (corrupt_zero_bytes, "is empty (0 bytes), not an idx-ubyte file of N x 28 x 28"),
    (corrupt_truncate, "is truncated: 9324 bytes, its header promises 9424 (12 items)"),
    (corrupt_random, "is not an idx-ubyte file of N (header"),
    (corrupt_label, "holds the label 12, outside 0..9"),
    (corrupt_count, "holds 12 images but 11 labels"),
    (corrupt_shape, "is not an idx-ubyte file of N x 28 x 28"),
])
def test_a_corrupt_mnist_file_is_one_line_naming_it(tmp_path, corrupt, message):
    write_mnist(tmp_path)
    path = corrupt(tmp_path / RAW)
    error = setup_error(mnist(tmp_path))
    assert error.startswith(str(path.resolve())) and message in error


# --- CIFAR's pickles -----------------------------------------------------------------------------

def cifar(root: Path, **args):
    return create_data("cifar10", root=str(root), val_size=5, num_workers=0, **args)


BATCH = Path("cifar-10-batches-py") / "data_batch_2"


class RunsShell:
    """Unpickling this with pickle.load runs ``touch <marker>`` (os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsPython:
    """Unpickling this with pickle.load runs Python source (builtins.exec)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("craft", [
    lambda m: RunsShell(m),  # the whole file
    lambda m: {"data": RunsPython(m), "labels": [0]},  # inside the batch dict
    lambda m: {"data": np.array([RunsShell(m)], dtype=object), "labels": [0]},  # in an array
])
def test_a_crafted_cifar_batch_runs_no_code(tmp_path, craft):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / BATCH).write_bytes(pickle.dumps(craft(marker), protocol=2))
    error = setup_error(cifar(tmp_path))
    assert not marker.exists()
    assert error.startswith(f"{(tmp_path / BATCH).resolve()} is not a CIFAR-10 batch")
    assert "which a CIFAR batch never does" in error


def rewrite_batch(root: Path, **entry) -> Path:
    path = root / BATCH
    with open(path, "rb") as f:
        batch = pickle.load(f)  # written by this test: trusted
    path.write_bytes(pickle.dumps({**batch, **entry}))
    return path


@pytest.mark.parametrize("entry, message", [
    ({"labels": [1, 2, 3, 4, 5, 6, 7, 10]}, "holds the label 10, outside 0..9"),
    ({"labels": [1, 2, 3, 4, 5, 6, 7]}, "holds 8 images but 7 labels"),
    ({"data": np.zeros((8, 1024), dtype=np.uint8)}, "its 'data' is not an N x 3072 uint8 array"),
    ({"labels": ["cat"] * 8}, "its 'labels' are not integer labels"),
])
def test_a_corrupt_cifar_batch_is_one_line_naming_it(tmp_path, entry, message):
    write_cifar(tmp_path)
    path = rewrite_batch(tmp_path, **entry)
    error = setup_error(cifar(tmp_path))
    assert error.startswith(str(path.resolve())) and message in error


def test_a_truncated_cifar_batch_is_one_line(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / BATCH
    path.write_bytes(path.read_bytes()[:1000])
    assert "is not a CIFAR-10 batch" in setup_error(cifar(tmp_path))


def test_an_official_size_cifar_batch_must_have_torchvisions_md5(tmp_path):
    """A file holding the official 10,000 images is checked against torchvision's md5 (these
    random images are not the official ones); check_md5=false reads a re-encoded copy."""
    write_cifar(tmp_path)
    rng = np.random.default_rng(0)
    path = rewrite_batch(tmp_path, data=rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                         labels=[int(v) for v in rng.integers(0, 10, 10000)])
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    official = OFFICIAL_MD5["cifar-10-batches-py"]["data_batch_2"]
    error = setup_error(cifar(tmp_path))
    assert error.startswith(f"{path.resolve()} holds the official 10000 images but its md5 is "
                            f"{md5}, not torchvision's {official}")
    dm = cifar(tmp_path, check_md5=False)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 8 * 4 + 10000
