"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) in torchvision's on-disk format (python pickles)."""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bnnbench.data.torchvision_data import TorchvisionData, check_labels, holdout_split
from bnnbench.errors import BnnbenchError, check_range, first_line


# torchvision's md5 sums of the official python-pickle batches (torchvision.datasets.CIFAR10/100)
OFFICIAL_MD5 = {
    "cifar-10-batches-py": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar-100-python": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
# how many images each official file holds: a file holding as many is taken to be it
OFFICIAL_COUNT = {"data_batch_1": 10000, "data_batch_2": 10000, "data_batch_3": 10000,
                  "data_batch_4": 10000, "data_batch_5": 10000, "test_batch": 10000,
                  "train": 50000, "test": 10000}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy dtypes and plain builtins (dicts, lists, strings, numbers)
    only: every other global a pickle names (``os.system``, ``builtins.eval``, any class) is
    refused, so a crafted CIFAR batch cannot run code when it is read."""

    ALLOWED = frozenset({
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
          for n in ("_reconstruct", "scalar")),
        *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
        *(("builtins", n) for n in ("list", "dict", "tuple", "set", "frozenset", "bytearray",
                                    "bytes", "str", "int", "float", "complex", "bool")),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never "
                                         "does (only numpy arrays and builtins are read)")
        return super().find_class(module, name)


def load_batch(path: Path) -> tuple[Any, str]:
    """(the unpickled batch, the md5 of the file), through :class:`ArraysOnlyUnpickler`."""
    payload = path.read_bytes()
    entry = ArraysOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
    return entry, hashlib.md5(payload, usedforsecurity=False).hexdigest()


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels; ``transform`` maps one uint8 image to float."""

    def __init__(self, images: Tensor, targets: Tensor,
                 transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[index]), self.targets[index]


def cifar_transform(mean: Sequence[float], std: Sequence[float],
                    augment: bool) -> Callable[[Tensor], Tensor]:
    """uint8 CHW -> float, ``(x / 255 - mean) / std``; ``augment``: 4-px zero-padded random 32
    crop and horizontal flip first (He et al. 2016's CIFAR augmentation)."""
    from torchvision.transforms import v2

    steps: list[Callable] = []
    if augment:
        steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class CIFAR10(TorchvisionData):
    """CIFAR-10: 50,000 training and 10,000 test 32 x 32 colour images, 10 classes.

    Files: torchvision's layout, ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the
    python pickles of the official archive; ``download=true`` fetches and checks it). The pickles
    are read as data only (:class:`ArraysOnlyUnpickler`: numpy arrays and builtins, never code);
    a file holding the official number of images must have torchvision's md5 (``check_md5``,
    default on; off for a copy you re-encoded). Truncated files, labels outside the classes and
    image/label counts that differ are one-line errors.
    Split (fixed, documented): ``val_size`` (default 5,000) training images are held out for
    validation by a permutation seeded with ``split_seed`` (default 0): 45,000 train / 5,000 val;
    ``test_batch`` is the test set.
    Preprocessing: per-channel ``(x / 255 - mean) / std`` (``data.mean``/``data.std``, the
    training set's statistics by default). ``augment`` (default off: BinaryConnect and BinaryNet
    train CIFAR-10 without augmentation) adds a padded random crop and a flip to training images.
    The authors' global contrast normalization + ZCA whitening is not reproduced.
    """

    name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    files = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
             "test_batch")
    test_files = ("test_batch",)
    label_key = "labels"
    in_chans, num_classes, img_size = 3, 10, 32
    torchvision_class = "CIFAR10"
    #: the training set's per-channel statistics: the defaults of ``mean`` / ``std``
    default_mean, default_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(self, root: str = "data", download: bool = False, val_size: int = 5000,
                 split_seed: int = 0, augment: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 check_md5: bool = True, batch_size: int = 128, num_workers: int = 0,
                 eval_batch_size: int | None = None) -> None:
        super().__init__(root, download, val_size, split_seed, batch_size, num_workers,
                         eval_batch_size)
        self.check_md5 = check_md5
        self.augment = augment
        self.mean = tuple(self.default_mean if mean is None else mean)
        self.std = tuple(self.default_std if std is None else std)
        for key, values in (("data.mean", self.mean), ("data.std", self.std)):
            if len(values) != self.in_chans:
                raise BnnbenchError(f"{key}={list(values)} must hold {self.in_chans} values "
                                    "(one per RGB channel)")
        for i, value in enumerate(self.std):
            check_range(f"data.std[{i}]", value, low=0, low_inclusive=False)

    def _download(self) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, self.torchvision_class)(str(self.root), download=True)

    def read_batches(self, names: Sequence[str]) -> tuple[Tensor, Tensor]:
        """uint8 images (N, 3, 32, 32) and int64 labels from pickled batches.

        Read as data (:class:`ArraysOnlyUnpickler`), checked (a dict with ``data`` of
        N x 3072 bytes and N labels in ``0..num_classes-1``), and a file holding the official
        number of images must be the official file: torchvision's md5 (``check_md5``)."""
        images, labels = [], []
        for name in names:
            path = self.directory / name
            try:
                entry, md5 = load_batch(path)
                if not isinstance(entry, dict):
                    raise TypeError(f"it holds a {type(entry).__name__}, not a dict")
                data = entry["data"]
                if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
                        or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                    raise ValueError("its 'data' is not an N x 3072 uint8 array")
                targets = np.asarray(entry[self.label_key])
                if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
                    raise ValueError(f"its '{self.label_key}' are not integer labels")
            except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError,
                    ValueError, AttributeError, IndexError) as err:
                raise BnnbenchError(f"{path} is not a {self.name} batch in torchvision's "
                                    f"python-pickle format ({first_line(err)})") from None
            check_labels(path, len(data), targets, self.num_classes)
            official = OFFICIAL_MD5[self.folder].get(name)
            if self.check_md5 and len(data) == OFFICIAL_COUNT.get(name) and md5 != official:
                raise BnnbenchError(
                    f"{path} holds the official {len(data)} images but its md5 is {md5}, not "
                    f"torchvision's {official}: the file is corrupt; download it again "
                    "(delete it, data.download=true), or set data.check_md5=false for a copy "
                    "you re-encoded yourself")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(targets.astype(np.int64))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    def _load_fit(self) -> tuple[ImageTensorDataset, ImageTensorDataset]:
        images, targets = self.read_batches(self.train_files)
        train, val = holdout_split(len(targets), self.val_size, self.split_seed)
        plain = cifar_transform(self.mean, self.std, augment=False)
        train_tf = cifar_transform(self.mean, self.std, augment=self.augment)
        return (ImageTensorDataset(images[train], targets[train], train_tf),
                ImageTensorDataset(images[val], targets[val], plain))

    def _load_test(self) -> ImageTensorDataset:
        return ImageTensorDataset(*self.read_batches(self.test_files),
                                  cifar_transform(self.mean, self.std, augment=False))

    @property
    def train_files(self) -> tuple[str, ...]:
        return tuple(f for f in self.files if f not in self.test_files)


class CIFAR100(CIFAR10):
    """CIFAR-100: as :class:`CIFAR10` with 100 fine labels; files
    ``<root>/cifar-100-python/{train,test}``. Same split and preprocessing rules."""

    name = "CIFAR-100"
    folder = "cifar-100-python"
    files = ("train", "test")
    test_files = ("test",)
    label_key = "fine_labels"
    in_chans, num_classes, img_size = 3, 100, 32
    torchvision_class = "CIFAR100"
    default_mean, default_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
