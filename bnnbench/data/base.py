"""The shared shape of every dataset: a LightningDataModule that states its geometry.

``in_chans``, ``num_classes`` and ``img_size`` are known from the config alone (before any file
is read), so train.py can build the model for the data without loading it.

Under DDP the validation and test loaders shard the split without padding (rank r reads examples
r, r + world, r + 2 world, ...): PyTorch's DistributedSampler, which Lightning would put there,
repeats examples to give every rank the same count, and the repeats would be scored twice (7
test images on 2 ranks: 8 scored). The shards differ by at most one example; the module sums the
counts across ranks (:mod:`bnnbench.lit`). Evaluation holds no per-batch collective (DDP syncs
buffers only on the first forward pass without gradients), so one rank may run one batch more.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from bnnbench.errors import check_range


def mnist_to_signed_unit(pixels: torch.Tensor) -> torch.Tensor:
    """MNIST preprocessing shared by every MNIST source: uint8 [0, 255] -> float [-1, 1].

    BinaryNet's MNIST inputs live in [-1, 1] (the authors' code: 2 * x / 255 - 1). The embedded
    digits and torchvision's MNIST both use this, so a model trained on one evaluates on the other.
    """
    return pixels.float().div(255.0).mul(2.0).sub(1.0)


def distributed() -> bool:
    """True inside a process group of more than one rank (Lightning's DDP)."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


class ImageClassificationData(pl.LightningDataModule):
    """Train/val/test image classification splits with loaders; subclasses fill ``setup``."""

    in_chans: int
    num_classes: int
    img_size: int

    def __init__(self, batch_size: int = 100, num_workers: int = 0,
                 eval_batch_size: int | None = None) -> None:
        super().__init__()
        check_range("data.batch_size", batch_size, low=1, integer=True)
        check_range("data.num_workers", num_workers, low=0, integer=True)
        if eval_batch_size is not None:
            check_range("data.eval_batch_size", eval_batch_size, low=1, integer=True)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        assert dataset is not None, "call setup() before asking for a loader"
        # a DistributedSampler subclass: Lightning keeps it instead of its padding one
        sampler = (UnrepeatedDistributedSampler(dataset, shuffle=False)
                   if not train and distributed() else None)
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
