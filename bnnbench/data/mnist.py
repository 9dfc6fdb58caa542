"""Full MNIST (LeCun et al. 1998) through torchvision, preprocessed exactly like ``mnist5k``."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bnnbench.data.base import mnist_to_signed_unit
from bnnbench.data.torchvision_data import TorchvisionData, holdout_split


class MNIST(TorchvisionData):
    """60,000 training and 10,000 test digits, 28 x 28, 10 classes.

    Files: torchvision's layout, ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    (the uncompressed idx files; ``download=true`` fetches and unpacks them).
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
    in_chans, num_classes, img_size = 1, 10, 28

    def _download(self) -> None:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        for train in (True, False):
            TorchvisionMNIST(str(self.root), train=train, download=True)

    def _load(self) -> None:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        def read(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
            ds = TorchvisionMNIST(str(self.root), train=train, download=False)
            return mnist_to_signed_unit(ds.data).unsqueeze(1), ds.targets.long()

        images, targets = read(train=True)
        train, val = holdout_split(len(targets), self.val_size, self.split_seed)
        self.train_set = TensorDataset(images[train], targets[train])
        self.val_set = TensorDataset(images[val], targets[val])
        self.test_set = TensorDataset(*read(train=False))
