"""Synthetic data: seeded random images of any geometry, for fast tests and smoke runs."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bnnbench.data.base import ImageClassificationData
from bnnbench.errors import check_range


class SyntheticData(ImageClassificationData):
    """Gaussian images ``(in_chans, img_size, img_size)`` with uniformly drawn labels.

    Each class has a fixed random template; an image is ``noise + class_signal * template[y]``,
    so a model can learn something (``class_signal=0`` gives pure noise). Everything is drawn from
    a ``torch.Generator`` seeded with ``seed``: the same arguments give the same tensors.
    Sizes: ``num_samples`` training, ``num_val`` validation and ``num_test`` test images.
    """

    def __init__(self, in_chans: int = 3, img_size: int = 32, num_classes: int = 10,
                 num_samples: int = 256, num_val: int = 64, num_test: int = 64, seed: int = 0,
                 class_signal: float = 1.0, batch_size: int = 32, num_workers: int = 0,
                 eval_batch_size: int | None = None) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size)
        for key, value, low in (("data.in_chans", in_chans, 1), ("data.img_size", img_size, 1),
                                ("data.num_classes", num_classes, 2),
                                ("data.num_samples", num_samples, 1), ("data.num_val", num_val, 1),
                                ("data.num_test", num_test, 1)):
            check_range(key, value, low=low, integer=True)
        check_range("data.class_signal", class_signal)
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        self.sizes = (num_samples, num_val, num_test)
        self.seed = seed
        self.class_signal = class_signal

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.in_chans, self.img_size, self.img_size)
        templates = torch.randn(self.num_classes, *shape, generator=gen)
        splits = []
        for n in self.sizes:
            labels = torch.randint(0, self.num_classes, (n,), generator=gen)
            images = torch.randn(n, *shape, generator=gen) + self.class_signal * templates[labels]
            splits.append(TensorDataset(images, labels))
        self.train_set, self.val_set, self.test_set = splits
