"""Datasets as LightningDataModules that state their geometry (in_chans, num_classes, img_size).

``imagenet_ffcv`` (and the ``write_ffcv`` writer) import FFCV only when used: it is an extra.
"""

from bnnbench.data.base import ImageClassificationData
from bnnbench.data.cifar import CIFAR10, CIFAR100
from bnnbench.data.embedded import EmbeddedMNIST
from bnnbench.data.mnist import MNIST
from bnnbench.data.synthetic import SyntheticData

__all__ = ["CIFAR10", "CIFAR100", "MNIST", "EmbeddedMNIST", "ImageClassificationData",
           "SyntheticData"]
