"""Full MNIST (LeCun et al. 1998) through torchvision, preprocessed exactly like ``mnist5k``."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bnnbench.data.base import mnist_to_signed_unit
from bnnbench.data.torchvision_data import TorchvisionData, check_labels, holdout_split
from bnnbench.errors import BnnbenchError

IDX_UBYTE = 0x08  # the idx type code of unsigned bytes: MNIST's images and labels


def read_idx(path: Path, tail: tuple[int, ...]) -> np.ndarray:
    """An idx-ubyte file (LeCun's format: ``0 0 0x08 ndim``, big-endian uint32 dims, the bytes)
    whose dimensions after the first are ``tail``; one line naming the file when it is empty,
    truncated, longer than its header says, or not an idx-ubyte file of that shape."""
    payload = Path(path).read_bytes()
    ndim = 1 + len(tail)
    header = 4 + 4 * ndim
    what = f"an idx-ubyte file of {' x '.join(['N', *map(str, tail)])}"
    if len(payload) < header:
        raise BnnbenchError(f"{path} is {'empty' if not payload else 'truncated'} "
                            f"({len(payload)} bytes), not {what}: download it again")
    zero, code, dims = struct.unpack(">HBB", payload[:4])
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    if zero != 0 or code != IDX_UBYTE or dims != ndim or tuple(shape[1:]) != tuple(tail):
        raise BnnbenchError(f"{path} is not {what} (header {payload[:4].hex()} {list(shape)}); "
                            "the file is corrupt or another file: download it again")
    expected = header + math.prod(shape)
    if len(payload) != expected:
        state = "truncated" if len(payload) < expected else "longer than its header says"
        raise BnnbenchError(f"{path} is {state}: {len(payload)} bytes, its header promises "
                            f"{expected} ({shape[0]} items); download it again")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape)


class MNIST(TorchvisionData):
    """60,000 training and 10,000 test digits, 28 x 28, 10 classes.

    Files: torchvision's layout, ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    (the uncompressed idx files; ``download=true`` fetches and unpacks them), read and checked
    here (:func:`read_idx`): an empty, truncated or foreign file, a label outside 0..9 and image
    and label files of different lengths are one-line errors.
    Split (fixed, documented): ``val_size`` (default 5,000) training digits are held out for
    validation by a permutation seeded with ``split_seed`` (default 0): 55,000 train / 5,000 val;
    the 10,000 t10k digits are the test set.
    Preprocessing: pixels scaled to [-1, 1] (:func:`~bnnbench.data.base.mnist_to_signed_unit`),
    the same as the embedded ``mnist5k`` digits, so a model trained on one evaluates on the other.
    No augmentation (BinaryNet's MNIST code has none).
    """

    name = "MNIST"
    folder = "MNIST/raw"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    test_files = files[2:]
    in_chans, num_classes, img_size = 1, 10, 28

    def _download(self) -> None:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        for train in (True, False):
            TorchvisionMNIST(str(self.root), train=train, download=True)

    def _read(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One split's idx files (``train`` or ``t10k``), checked."""
        images = read_idx(self.directory / f"{prefix}-images-idx3-ubyte", (28, 28))
        labels_path = self.directory / f"{prefix}-labels-idx1-ubyte"
        labels = read_idx(labels_path, ())
        check_labels(labels_path, len(images), labels, self.num_classes)
        return (mnist_to_signed_unit(torch.from_numpy(images.copy())).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)))

    def _load_fit(self) -> tuple[TensorDataset, TensorDataset]:
        images, targets = self._read("train")
        train, val = holdout_split(len(targets), self.val_size, self.split_seed)
        return (TensorDataset(images[train], targets[train]),
                TensorDataset(images[val], targets[val]))

    def _load_test(self) -> TensorDataset:
        return TensorDataset(*self._read("t10k"))
