"""Data: MNIST/CIFAR in torchvision's on-disk format (small files written here), the missing-files
error, synthetic data, every data config, and short runs through train.run."""

from __future__ import annotations

import math
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from bnnbench.data.base import mnist_to_signed_unit
from bnnbench.data.torchvision_data import holdout_split
from bnnbench.errors import BnnbenchError
from bnnbench.train import run
from tests.conftest import FAST, compose_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors run faster on one intra-op thread (no OpenMP barrier spin on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- torchvision's on-disk formats, written small ------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx-ubyte file (LeCun's MNIST format): magic 0x0000 08 <ndim>, big-endian dims, bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar(root: Path, hundred: bool = False, per_batch: int = 8, n_test: int = 10,
                seed: int = 0) -> dict:
    """Pickled batches as in the official python archives: dict with 'data' (N, 3072) uint8."""
    rng = np.random.default_rng(seed)
    folder, key, classes = (("cifar-100-python", "fine_labels", 100) if hundred
                            else ("cifar-10-batches-py", "labels", 10))
    (root / folder).mkdir(parents=True)
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    sizes = [per_batch * 5, n_test] if hundred else [per_batch] * 5 + [n_test]
    written = {}
    for name, n in zip(names, sizes):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, n)]
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels, "batch_label": name}, f)
        written[name] = (data.reshape(n, 3, 32, 32), labels)
    return written


def datamodule(tmp_path: Path, name: str, *overrides: str):
    cfg = compose_config([f"data={name}", *overrides], tmp_path / "cfg")
    return instantiate(cfg.data)


# --- MNIST ---------------------------------------------------------------------------------------

def test_mnist_reads_torchvision_files_with_mnist5k_preprocessing(tmp_path):
    arrays = write_mnist(tmp_path / "data")
    dm = datamodule(tmp_path, "mnist", f"data.root={tmp_path / 'data'}", "data.val_size=10")
    assert (dm.in_chans, dm.num_classes, dm.img_size) == (1, 10, 28)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 12)
    x, y = dm.train_set[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the test set is t10k, pixel for pixel, through the embedded data's preprocessing
    images, labels = arrays["t10k"]
    test_x, test_y = dm.test_set.tensors
    assert torch.equal(test_x, mnist_to_signed_unit(torch.from_numpy(images)).unsqueeze(1))
    assert torch.equal(test_y, torch.from_numpy(labels.astype(np.int64)))
    assert test_x.min() >= -1 and test_x.max() <= 1
    # the validation split: a fixed, seeded hold-out of train, disjoint from the training part
    train_idx, val_idx = holdout_split(40, 10, seed=0)
    train_images = mnist_to_signed_unit(torch.from_numpy(arrays["train"][0])).unsqueeze(1)
    assert torch.equal(dm.val_set.tensors[0], train_images[val_idx])
    assert torch.equal(dm.train_set.tensors[0], train_images[train_idx])


def test_embedded_and_full_mnist_share_geometry_and_scale(tmp_path):
    from bnnbench.data.embedded import EmbeddedMNIST

    write_mnist(tmp_path / "data")
    full = datamodule(tmp_path, "mnist", f"data.root={tmp_path / 'data'}", "data.val_size=10")
    small = EmbeddedMNIST()
    full.setup(), small.setup()
    for dm in (full, small):
        x, _ = dm.test_set[0]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert (dm.in_chans, dm.num_classes, dm.img_size) == (1, 10, 28)
    assert small.test_set.tensors[0].min() == -1 and small.test_set.tensors[0].max() == 1


def test_holdout_split_is_fixed_and_disjoint():
    train, val = holdout_split(100, 20, seed=0)
    again_train, again_val = holdout_split(100, 20, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert len(val) == 20 and not set(train) & set(val) and len(set(train) | set(val)) == 100
    assert not np.array_equal(val, holdout_split(100, 20, seed=1)[1])
    with pytest.raises(BnnbenchError, match="data.val_size"):
        holdout_split(100, 100, seed=0)


# --- CIFAR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hundred, classes", [("cifar10", False, 10), ("cifar100", True, 100)])
def test_cifar_reads_torchvision_pickles(tmp_path, name, hundred, classes):
    written = write_cifar(tmp_path / "data", hundred=hundred)
    dm = datamodule(tmp_path, name, f"data.root={tmp_path / 'data'}", "data.val_size=8",
                    "data.num_workers=0")
    assert (dm.in_chans, dm.num_classes, dm.img_size) == (3, classes, 32)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (32, 8, 10)
    test_images, test_labels = written["test" if hundred else "test_batch"]
    x, y = dm.test_set[3]
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    expected = (torch.from_numpy(test_images[3]).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5) and int(y) == test_labels[3]
    batch_x, batch_y = next(iter(dm.train_dataloader()))
    assert batch_x.shape == (32, 3, 32, 32) and batch_y.dtype == torch.int64


def test_cifar_augmentation_changes_training_images_only(tmp_path):
    write_cifar(tmp_path / "data")
    plain = datamodule(tmp_path, "cifar10", f"data.root={tmp_path / 'data'}", "data.val_size=8")
    aug = datamodule(tmp_path, "cifar10", f"data.root={tmp_path / 'data'}", "data.val_size=8",
                     "data.augment=true")
    plain.setup(), aug.setup()
    torch.manual_seed(0)
    assert any(not torch.equal(aug.train_set[i][0], plain.train_set[i][0]) for i in range(8))
    assert all(torch.equal(aug.val_set[i][0], plain.val_set[i][0]) for i in range(8))


# --- missing files: one line naming the path -----------------------------------------------------

@pytest.mark.parametrize("name, where", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python")])
def test_missing_files_is_one_line_naming_the_path(tmp_path, name, where):
    root = tmp_path / "empty"
    dm = datamodule(tmp_path, name, f"data.root={root}")
    with pytest.raises(BnnbenchError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message
    assert str(root.resolve() / where) in message and "data.download=true" in message


def test_partly_missing_files_are_named(tmp_path):
    write_mnist(tmp_path / "data")
    (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    dm = datamodule(tmp_path, "mnist", f"data.root={tmp_path / 'data'}")
    with pytest.raises(BnnbenchError, match=r"missing: t10k-labels-idx1-ubyte\)"):
        dm.setup()


def test_cli_without_files_prints_one_line_no_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench", "data=mnist", f"data.root={tmp_path / 'nowhere'}",
         f"hydra.run.dir={tmp_path}/run", "trainer.accelerator=cpu"],
        cwd=tmp_path, text=True, capture_output=True, timeout=300, env=env, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bnnbench: error:")]
    assert len(errors) == 1
    assert f"{(tmp_path / 'nowhere').resolve()}/MNIST/raw/" in errors[0]


# --- synthetic -----------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_any_shape(tmp_path):
    over = ["data.in_chans=2", "data.img_size=12", "data.num_classes=5", "data.num_samples=20"]
    first, second = (datamodule(tmp_path, "synthetic", *over) for _ in range(2))
    other = datamodule(tmp_path, "synthetic", *over, "data.seed=1")
    for dm in (first, second, other):
        dm.setup()
    assert (first.in_chans, first.img_size, first.num_classes) == (2, 12, 5)
    x, y = first.train_set.tensors
    assert x.shape == (20, 2, 12, 12) and int(y.max()) < 5
    assert torch.equal(x, second.train_set.tensors[0])
    assert not torch.equal(x, other.train_set.tensors[0])


# --- every data config composes with the shipped defaults and instantiates ----------------------

@pytest.mark.parametrize("name, geometry", [
    ("mnist5k", (1, 10, 28)), ("mnist", (1, 10, 28)), ("cifar10", (3, 10, 32)),
    ("cifar100", (3, 100, 32)), ("imagenet", (3, 1000, 224)), ("synthetic", (3, 10, 32)),
])
def test_data_config_composes_and_states_geometry(tmp_path, name, geometry):
    dm = datamodule(tmp_path, name)  # instantiating reads no file
    assert (dm.in_chans, dm.num_classes, dm.img_size) == geometry


# --- short runs through train.run ----------------------------------------------------------------

@pytest.mark.parametrize("data, model, extra", [
    ("mnist", "mlp", ["+method=bnn", "data.val_size=10"]),
    ("cifar10", "vgg_small", ["+method=bnn", "data.val_size=8", "data.num_workers=0",
                              "data.batch_size=16", "model.hidden_features=64"]),
    ("synthetic", "nin", ["data.in_chans=1", "data.img_size=20", "data.num_classes=4",
                          "data.num_samples=32", "data.num_val=8", "data.num_test=8"]),
])
def test_short_run_on_each_source(tmp_path, make_cfg, data, model, extra):
    root = tmp_path / "data"
    if data == "mnist":
        write_mnist(root)
    elif data == "cifar10":
        write_cifar(root)
    overrides = [f"data={data}", f"model={model}", *extra, *FAST]
    if data != "synthetic":
        overrides.append(f"data.root={root}")
    record = run(make_cfg(overrides))
    assert record.data == data and record.model == model
    assert math.isfinite(record.test_top1) and 0 <= record.test_top1 <= 100
