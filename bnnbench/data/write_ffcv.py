"""Write an ImageFolder tree (``<src>/train/<class>/*.jpg``, ``<src>/val/<class>/*.jpg``) as FFCV
``train.beton`` and ``val.beton`` files (Leclerc et al. 2023, "FFCV: Accelerating Training by
Removing Data Bottlenecks"), plus ``classes.json`` with the class names in label order.

    python -m bnnbench.data.write_ffcv --src /datasets/imagenet --out data/imagenet_ffcv \
        --max-resolution 256 --jpeg-quality 90 --num-workers 16

``--resize square`` (default) squashes every image to max_resolution x max_resolution, as Caffe's
``convert_imageset --resize_height=256 --resize_width=256`` did for Tang et al. ("resize 256x256");
with the ``tang`` train crop and the 0.875 center crop of ``data=imagenet``, training then sees
exactly a random 224 x 224 crop of the 256 x 256 image and evaluation its center 224 crop.
``--resize keep-aspect`` is FFCV's own default: the longer side is scaled to <= max_resolution.
Labels are ImageFolder's: class folders sorted by name, the same list in train/ and val/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from bnnbench.data.ffcv_support import import_ffcv
from bnnbench.errors import BnnbenchError
from bnnbench.files import atomic_path, write_atomic

SPLITS = ("train", "val")
RESIZE_MODES = ("square", "keep-aspect")
WRITE_MODES = ("jpg", "raw", "smart", "proportion")
CLASSES_FILE = "classes.json"


class FolderImages:
    """ImageFolder samples as (RGB PIL image, label), squashed to ``size`` x ``size`` if given."""

    def __init__(self, root: Path, size: int | None) -> None:
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(str(root))
        self.size = size

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.folder.samples[index]
        with Image.open(path) as img:
            img = img.convert("RGB")
        if self.size is not None:
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return img, label


def open_split(src: Path, split: str, size: int | None) -> FolderImages:
    root = src / split
    if not root.is_dir():
        raise BnnbenchError(f"{root} is not a directory: --src must hold train/ and val/, each "
                            "with one sub-folder of images per class (ImageFolder layout)")
    try:
        return FolderImages(root, size)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders / no images
        raise BnnbenchError(f"{root} is not an ImageFolder tree ({str(err).splitlines()[0]}): "
                            "need one sub-folder of .jpg/.png images per class") from None


def write_split(images: FolderImages, path: Path, *, max_resolution: int, jpeg_quality: int,
                write_mode: str, compress_probability: float, num_workers: int) -> None:
    """Write one split as an FFCV dataset with fields ``image`` (RGB) and ``label`` (int)."""
    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                               jpeg_quality=jpeg_quality,
                               compress_probability=compress_probability),
        "label": IntField(),
    }
    with atomic_path(path) as tmp:  # a killed writer leaves no half .beton to train on
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(images)


def write_imagenet(src: str | Path, out: str | Path, *, max_resolution: int = 256,
                   jpeg_quality: int = 90, resize: str = "square", write_mode: str = "jpg",
                   compress_probability: float = 0.5, num_workers: int = 1) -> dict[str, int]:
    """Write ``<out>/train.beton``, ``<out>/val.beton`` and ``<out>/classes.json`` from ``src``.

    Returns the number of images written per split.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if resize not in RESIZE_MODES:
        raise BnnbenchError(f"--resize {resize!r}: choose one of {', '.join(RESIZE_MODES)}")
    if write_mode not in WRITE_MODES:
        raise BnnbenchError(f"--write-mode {write_mode!r}: choose one of {', '.join(WRITE_MODES)}")
    if max_resolution < 8 or not 1 <= jpeg_quality <= 100 or num_workers < 1:
        raise BnnbenchError("need --max-resolution >= 8, 1 <= --jpeg-quality <= 100 and "
                            "--num-workers >= 1")
    size = max_resolution if resize == "square" else None
    splits = {split: open_split(src, split, size) for split in SPLITS}
    if splits["train"].classes != splits["val"].classes:
        raise BnnbenchError(f"{src}/train and {src}/val have different class folders: labels "
                            "would not match; give both the same class sub-folders")
    counts = {}
    for split, images in splits.items():
        write_split(images, out / f"{split}.beton", max_resolution=max_resolution,
                    jpeg_quality=jpeg_quality, write_mode=write_mode,
                    compress_probability=compress_probability, num_workers=num_workers)
        counts[split] = len(images)
    write_atomic(out / CLASSES_FILE, json.dumps({
        "classes": splits["train"].classes, "counts": counts, "max_resolution": max_resolution,
        "resize": resize, "jpeg_quality": jpeg_quality, "write_mode": write_mode,
    }, indent=1))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnnbench.data.write_ffcv",
        description="ImageFolder tree (train/ and val/) -> FFCV train.beton and val.beton.")
    parser.add_argument("--src", required=True, help="ImageFolder root holding train/ and val/")
    parser.add_argument("--out", required=True, help="output directory (data.root of data=imagenet)")
    parser.add_argument("--max-resolution", type=int, default=256,
                        help="stored side in pixels (square) or longer-side cap (keep-aspect)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--resize", choices=RESIZE_MODES, default="square",
                        help="square: squash to NxN like Caffe/Tang (default); keep-aspect: FFCV's")
    parser.add_argument("--write-mode", choices=WRITE_MODES, default="jpg",
                        help="FFCV RGBImageField write_mode (jpg: smallest files)")
    parser.add_argument("--compress-probability", type=float, default=0.5,
                        help="share of images stored as JPEG in write-mode 'proportion'")
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        counts = write_imagenet(args.src, args.out, max_resolution=args.max_resolution,
                                jpeg_quality=args.jpeg_quality, resize=args.resize,
                                write_mode=args.write_mode,
                                compress_probability=args.compress_probability,
                                num_workers=args.num_workers)
    except BnnbenchError as err:
        print(f"write_ffcv: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {counts['train']} train and {counts['val']} val images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
