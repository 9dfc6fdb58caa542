"""ImageNet (ILSVRC-2012) through FFCV ``.beton`` files, with Tang et al.'s preprocessing.

Write the files once with :mod:`bnnbench.data.write_ffcv`; this module only reads them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnbench.data.base import ImageClassificationData
from bnnbench.data.ffcv_support import import_ffcv
from bnnbench.data.write_ffcv import CLASSES_FILE
from bnnbench.errors import BnnbenchError, check_range, first_line

#: ImageNet's per-channel RGB mean on the 0..255 scale (what Caffe's mean subtraction removes).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
TRAIN_CROPS = ("tang", "rrc")
WRITE_HINT = ("write them with: python -m bnnbench.data.write_ffcv --src <ImageFolder root with "
              "train/ val/> --out <dir>")


def distributed_world() -> bool:
    """True when torch.distributed is initialized (Lightning's DDP): shard the FFCV loaders."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class ImageNetFFCV(ImageClassificationData):
    """ImageNet from ``<root>/train.beton`` and ``<root>/val.beton``.

    Preprocessing (Tang et al. 2017, after Caffe): training images are a random crop of side
    ``crop_ratio`` (224/256 = 0.875) of the stored image with a random horizontal flip; evaluation
    images are the center crop of the same side. Both are resized to ``img_size`` (the paper: 224)
    by FFCV's decoder. With files written by ``write_ffcv --resize square --max-resolution 256``
    this is exactly "resize 256x256, random 224 crop, flip" and "single center crop".
    ``train_crop='rrc'`` uses Inception-style RandomResizedCrop instead (scale 0.08..1, aspect
    3/4..4/3; FFCV's ImageNet recipe). Normalization: ``(x - mean) / std`` on the 0..255 scale;
    the default ``std = 1`` is Tang's (Caffe's) mean subtraction only.

    Splits: ``train.beton`` trains; ``val.beton`` (ILSVRC-2012's 50,000 validation images) is both
    the validation and the test set, as in the papers (ImageNet's test labels are not public).
    ``num_classes`` is stated in the config (1000; a subset needs ``data.num_classes``) and checked
    against the labels in the files.

    Loaders: FFCV ``Loader`` with ``OrderOption.RANDOM`` (train, seeded by ``seed``, drop last)
    and ``OrderOption.SEQUENTIAL`` (eval), ``os_cache`` (memory-mapped, shared by processes),
    ``num_workers`` decoding threads, batches on the CPU (Lightning moves them). Under DDP
    (torch.distributed initialized) each loader is built with ``distributed=True`` so every rank
    reads its own shard; ``batch_size`` is per process.
    """

    in_chans = 3

    def __init__(self, root: str = "data/imagenet_ffcv", img_size: int = 224,
                 num_classes: int = 1000, batch_size: int = 256, num_workers: int = 8,
                 eval_batch_size: int | None = None, train_crop: str = "tang",
                 crop_ratio: float = 224 / 256, mean: Sequence[float] = IMAGENET_MEAN_255,
                 std: Sequence[float] = (1.0, 1.0, 1.0), os_cache: bool = True, seed: int = 0,
                 drop_last: bool = True, batches_ahead: int = 3) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size)
        check_range("data.img_size", img_size, low=8)
        check_range("data.num_classes", num_classes, low=2)
        check_range("data.crop_ratio", crop_ratio, low=0, high=1, low_inclusive=False)
        if train_crop not in TRAIN_CROPS:
            raise BnnbenchError(f"data.train_crop={train_crop!r} is not valid; choose one of: "
                                f"{', '.join(TRAIN_CROPS)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise BnnbenchError("data.mean and data.std need 3 values each (RGB), std > 0")
        self.root = Path(root).expanduser()
        self.img_size, self.num_classes = img_size, num_classes
        self.train_crop, self.crop_ratio = train_crop, crop_ratio
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.os_cache, self.seed = os_cache, seed
        self.drop_last, self.batches_ahead = drop_last, batches_ahead
        self._eval_loader: Any = None
        self._checked = False

    # --- files ---------------------------------------------------------------------------------

    def path(self, split: str) -> Path:
        return (self.root / f"{split}.beton").resolve()

    def check_files(self) -> None:
        """One-line BnnbenchError for a missing, unreadable or mismatched ``.beton``."""
        import_ffcv()
        from ffcv.reader import Reader

        for split in ("train", "val"):
            path = self.path(split)
            if not path.is_file():
                raise BnnbenchError(f"no FFCV ImageNet {split} file: {path} does not exist; expected "
                                    f"train.beton and val.beton in data.root={self.root}; "
                                    f"{WRITE_HINT}")
            try:
                reader = Reader(str(path))
                fields = set(reader.field_names)
                labels = (reader.metadata[f"f{reader.field_names.index('label')}"]
                          if "label" in fields else None)
                table = reader.alloc_table
                if len(table) == 0 or int((table["ptr"] + table["size"]).max()) > \
                        path.stat().st_size:
                    raise ValueError("its allocation table points past the end of the file")
            except Exception as err:
                raise BnnbenchError(f"{path} is not a readable FFCV .beton ({first_line(err)}); "
                                    f"rewrite it: {WRITE_HINT}") from None
            if not {"image", "label"} <= fields or labels is None:
                raise BnnbenchError(f"{path} has fields {sorted(fields)}, need 'image' and "
                                    f"'label'; {WRITE_HINT}")
            if reader.num_samples == 0:
                raise BnnbenchError(f"{path} holds no images; {WRITE_HINT}")
            top = int(np.max(labels))
            if top >= self.num_classes:
                raise BnnbenchError(f"{path} has labels up to {top} but data.num_classes="
                                    f"{self.num_classes}; set data.num_classes={top + 1} or more")

    def classes(self) -> list[str] | None:
        """Class names in label order, from the writer's ``classes.json`` (None if absent)."""
        meta = self.root / CLASSES_FILE
        return json.loads(meta.read_text())["classes"] if meta.is_file() else None

    def prepare_data(self) -> None:
        self.check_files()

    def setup(self, stage: str | None = None) -> None:
        if not self._checked:  # every rank checks once (prepare_data runs on rank 0 only)
            self.check_files()
            self._checked = True

    # --- loaders -------------------------------------------------------------------------------

    def pipelines(self, train: bool) -> dict[str, list]:
        from ffcv.fields.decoders import (
            CenterCropRGBImageDecoder,
            IntDecoder,
            RandomResizedCropRGBImageDecoder,
        )
        from ffcv.transforms import (
            NormalizeImage,
            RandomHorizontalFlip,
            Squeeze,
            ToTensor,
            ToTorchImage,
        )

        size = (self.img_size, self.img_size)
        if not train:
            decode: list = [CenterCropRGBImageDecoder(size, ratio=self.crop_ratio)]
        elif self.train_crop == "tang":  # a square crop of side crop_ratio: a fixed-size random crop
            area = self.crop_ratio ** 2
            decode = [RandomResizedCropRGBImageDecoder(size, scale=(area, area), ratio=(1.0, 1.0)),
                      RandomHorizontalFlip()]
        else:
            decode = [RandomResizedCropRGBImageDecoder(size, scale=(0.08, 1.0),
                                                       ratio=(3 / 4, 4 / 3)),
                      RandomHorizontalFlip()]
        image = [*decode, NormalizeImage(self.mean, self.std, np.float32), ToTensor(),
                 ToTorchImage()]
        return {"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(1)]}

    def make_loader(self, train: bool) -> Any:
        import_ffcv()
        from ffcv.loader import Loader, OrderOption

        path = self.path("train" if train else "val")
        try:
            return Loader(str(path), batch_size=self.batch_size if train else self.eval_batch_size,
                          num_workers=max(1, self.num_workers),
                          order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                          os_cache=self.os_cache, distributed=distributed_world(), seed=self.seed,
                          drop_last=self.drop_last if train else False,
                          batches_ahead=self.batches_ahead, pipelines=self.pipelines(train))
        except Exception as err:
            raise BnnbenchError(f"cannot read {path} with FFCV ({first_line(err)}); "
                                f"rewrite it: {WRITE_HINT}") from None

    def train_dataloader(self) -> Any:
        return self.make_loader(train=True)

    def val_dataloader(self) -> Any:
        if self._eval_loader is None:  # built (and JIT-compiled) once, reused for test
            self._eval_loader = self.make_loader(train=False)
        return self._eval_loader

    def test_dataloader(self) -> Any:
        return self.val_dataloader()
