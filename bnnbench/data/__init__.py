"""Datasets as LightningDataModules that state their geometry (in_chans, num_classes, img_size).

``imagenet_ffcv`` (and the ``write_ffcv`` writer) import FFCV only when used: it is an extra.

:data:`DATA_MODULES` names every data module (the name equals ``conf/data/<name>.yaml``, whose
``_target_`` is the class); a run records its data by this name, and a config read back from disk
is rebuilt through :func:`create_data`, never by importing a class path the file names.
"""

from __future__ import annotations

import importlib
from typing import Any

from bnnbench.data.base import ImageClassificationData
from bnnbench.data.cifar import CIFAR10, CIFAR100
from bnnbench.data.embedded import EmbeddedMNIST
from bnnbench.data.mnist import MNIST
from bnnbench.data.synthetic import SyntheticData
from bnnbench.errors import BnnbenchError, check_knobs

# name -> class path (a string: ImageNet's module needs the ffcv extra, imported only when built)
DATA_MODULES: dict[str, str] = {
    "mnist5k": "bnnbench.data.embedded.EmbeddedMNIST",
    "mnist": "bnnbench.data.mnist.MNIST",
    "cifar10": "bnnbench.data.cifar.CIFAR10",
    "cifar100": "bnnbench.data.cifar.CIFAR100",
    "imagenet": "bnnbench.data.imagenet_ffcv.ImageNetFFCV",
    "synthetic": "bnnbench.data.synthetic.SyntheticData",
}


def data_name_of(class_path: str) -> str | None:
    """The registered name of a data module's class path (a config's ``_target_``), else None."""
    return next((name for name, path in DATA_MODULES.items() if path == class_path), None)


def create_data(name: str, **args: Any) -> ImageClassificationData:
    """Build a registered data module by name (the Python twin of ``data=<name>``)."""
    if name not in DATA_MODULES:
        raise BnnbenchError(f"unknown data {name!r}; valid data: {', '.join(sorted(DATA_MODULES))}")
    module_name, _, class_name = DATA_MODULES[name].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    check_knobs("data", cls, args)  # batch_size=1.5, mean=[a]: one line before anything loads
    try:
        return cls(**args)
    except TypeError as err:  # an unknown or missing argument
        raise BnnbenchError(f"data {name!r}: {err}") from err


__all__ = ["CIFAR10", "CIFAR100", "DATA_MODULES", "MNIST", "EmbeddedMNIST",
           "ImageClassificationData", "SyntheticData", "create_data", "data_name_of"]
