"""Datasets as LightningDataModules that state their geometry (in_chans, num_classes, img_size)."""

from bnnbench.data.base import ImageClassificationData
from bnnbench.data.embedded import EmbeddedMNIST

__all__ = ["EmbeddedMNIST", "ImageClassificationData"]
