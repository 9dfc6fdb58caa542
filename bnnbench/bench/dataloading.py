"""Images/s of the FFCV ImageNet loader vs a torchvision ImageFolder DataLoader, same JPEGs.

    python -m bnnbench.bench.dataloading            # writes reports/dataloading.md

Both loaders apply Tang et al.'s training preprocessing (resize to 256 x 256, random 224 crop,
horizontal flip, mean subtraction, float32 CHW batches) with the same batch size and worker count
to the same generated JPEGs (an ImageFolder tree of ``--num-images`` images, ``--min-side`` to
``--max-side`` px). FFCV reads the ``.beton`` that :mod:`bnnbench.data.write_ffcv` wrote from that
tree once (256 x 256 JPEGs, quality 90: the writer's cost is reported too); torchvision decodes
and resizes the original JPEGs every epoch: that difference is FFCV's reason to exist. After one
warm-up epoch each (FFCV's numba compilation, the DataLoader's worker start), timed epochs of the
two loaders alternate so that both see the same background load. Every number in the report is
measured by this script; none is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from bnnbench.bench import cpu_model
from PIL import Image

from bnnbench.data.imagenet_ffcv import IMAGENET_MEAN_255
from bnnbench.files import write_atomic

DEFAULT_OUT = Path("reports") / "dataloading.md"


def make_image_folder(root: Path, classes: int, per_class: int, min_side: int, max_side: int,
                      seed: int = 0, quality: int = 90) -> int:
    """Write ``classes`` x ``per_class`` RGB JPEGs (random sides in [min_side, max_side]) as an
    ImageFolder tree ``root/class_<k>/<i>.jpg``. Images are smooth colour fields plus grain, so
    they compress like photographs rather than like noise. Returns the number written."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
            img = img + rng.integers(-12, 13, img.shape, dtype=np.int16)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg",
                                                                    quality=quality)
    return classes * per_class


def time_epoch(loader: Iterable) -> tuple[int, float]:
    """(images, seconds) for one full pass over ``loader``."""
    start, images = time.perf_counter(), 0
    for x, y in loader:
        assert x.dtype == torch.float32 and x.ndim == 4 and len(y) == len(x)
        images += len(x)
    return images, time.perf_counter() - start


def torchvision_loader(train_dir: Path, img_size: int, resize: int, batch_size: int,
                       num_workers: int) -> torch.utils.data.DataLoader:
    """ImageFolder + DataLoader with the same preprocessing as the FFCV ``tang`` pipeline."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.PILToTensor(), v2.Resize((resize, resize), antialias=True), v2.RandomCrop(img_size),
        v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=False),
        v2.Normalize(list(IMAGENET_MEAN_255), [1.0, 1.0, 1.0]),
    ])
    return torch.utils.data.DataLoader(
        ImageFolder(str(train_dir), transform=transform), batch_size=batch_size, shuffle=True,
        num_workers=num_workers, drop_last=True, persistent_workers=num_workers > 0)


def run_bench(args: argparse.Namespace, workdir: Path) -> dict:
    from bnnbench.data.imagenet_ffcv import ImageNetFFCV
    from bnnbench.data.write_ffcv import write_imagenet

    src, betons = workdir / "src", workdir / "ffcv"
    per_class = max(1, args.num_images // args.classes)
    t0 = time.perf_counter()
    num = make_image_folder(src / "train", args.classes, per_class, args.min_side, args.max_side,
                            seed=args.seed)
    make_image_folder(src / "val", args.classes, 1, args.min_side, args.max_side, seed=args.seed + 1)
    jpeg_bytes = sum(p.stat().st_size for p in (src / "train").rglob("*.jpg"))
    t1 = time.perf_counter()
    write_imagenet(src, betons, max_resolution=args.resize, jpeg_quality=90, resize="square",
                   num_workers=args.num_workers)
    t2 = time.perf_counter()
    presized = workdir / "src256"  # what the .beton stores, as plain JPEG files (a control)
    for path in (src / "train").rglob("*.jpg"):
        target = presized / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            img.convert("RGB").resize((args.resize, args.resize), Image.BILINEAR).save(
                target, quality=90)

    ffcv = ImageNetFFCV(root=str(betons), img_size=args.img_size, num_classes=args.classes,
                        batch_size=args.batch_size, num_workers=args.num_workers,
                        crop_ratio=args.img_size / args.resize, seed=args.seed)
    ffcv.setup("fit")
    loaders = {  # DataLoaders first: their persistent workers fork before FFCV starts threads
        "torchvision": torchvision_loader(src / "train", args.img_size, args.resize,
                                          args.batch_size, args.num_workers),
        "torchvision-256": torchvision_loader(presized, args.img_size, args.resize,
                                              args.batch_size, args.num_workers),
        "ffcv": ffcv.train_dataloader(),
    }
    warmup = {name: time_epoch(loader)[1] for name, loader in loaders.items()}
    totals = {name: [0, 0.0] for name in loaders}
    load_before = os.getloadavg()
    for _ in range(args.epochs):  # alternate: both loaders see the same background load
        for name, loader in loaders.items():
            images, seconds = time_epoch(loader)
            totals[name][0] += images
            totals[name][1] += seconds
    load_after = os.getloadavg()
    rate = {name: images / seconds for name, (images, seconds) in totals.items()}
    return {
        "images": num, "jpeg_mb": jpeg_bytes / 2**20, "generate_s": t1 - t0, "write_s": t2 - t1,
        "beton_mb": (betons / "train.beton").stat().st_size / 2**20, "warmup_s": warmup,
        "totals": totals, "rate": rate, "ratio": rate["ffcv"] / rate["torchvision"],
        "ratio_presized": rate["ffcv"] / rate["torchvision-256"],
        "load": (load_before[0], load_after[0]),
    }


def render(result: dict, args: argparse.Namespace, command: str) -> str:
    """The report (markdown): machine, date, command, settings, measured rates and the ratio."""
    from importlib.metadata import version

    import torchvision

    rate, totals, warmup = result["rate"], result["totals"], result["warmup_s"]
    side = f"{args.resize}x{args.resize}"
    reads = {
        "ffcv": f"train.beton ({side} JPEGs)",
        "torchvision": "the generated JPEGs (ImageFolder)",
        "torchvision-256": f"the same JPEGs pre-resized to {side} (control)",
    }
    verdict = "reaches" if result["ratio"] >= 2 else "does NOT reach"
    now = dt.datetime.now(dt.timezone.utc)
    machine = (f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} "
               f"{platform.release()}; Python {platform.python_version()}, torch "
               f"{torch.__version__}, torchvision {torchvision.__version__}, ffcv "
               f"{version('ffcv')}, numpy {np.__version__}")
    data = (f"{result['images']} generated JPEGs in {args.classes} classes, sides "
            f"{args.min_side}-{args.max_side} px, quality 90, {result['jpeg_mb']:.1f} MiB; the "
            f"FFCV file was written once from the same tree by `bnnbench.data.write_ffcv` "
            f"(--resize square --max-resolution {args.resize} --jpeg-quality 90) in "
            f"{result['write_s']:.1f} s ({result['beton_mb']:.1f} MiB)")
    rows = [f"| {name} | {what} | {rate[name]:.1f} | {totals[name][0]} | "
            f"{totals[name][1]:.2f} | {warmup[name]:.2f} |" for name, what in reads.items()]
    lines = [
        "# Data loading: FFCV vs torchvision ImageFolder",
        "",
        (f"Generated by `bnnbench/bench/dataloading.py` on {now:%Y-%m-%d %H:%M} UTC. "
         "Do not edit by hand; regenerate with:"),
        "",
        "```",
        command,
        "```",
        "",
        f"- Machine: {machine}.",
        (f"- Load average (1 min) before/after the timed epochs: {result['load'][0]:.1f} / "
         f"{result['load'][1]:.1f} (other processes shared the machine when this is high)."),
        f"- Data: {data}.",
        (f"- Preprocessing (all loaders): resize to {side}, random {args.img_size} crop, "
         "horizontal flip, mean subtraction (Tang et al.), float32 NCHW batches on the CPU."),
        (f"- Batch size {args.batch_size}, {args.num_workers} workers each (FFCV: decoding "
         f"threads; torchvision: DataLoader processes), drop_last; {args.epochs} timed epochs "
         "each, alternating between loaders, after one warm-up epoch each."),
        "",
        "| loader | reads | images/s | timed images | timed s | warm-up epoch s |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        (f"**FFCV / torchvision = {result['ratio']:.2f}x** (the target is >= 2x: this run "
         f"{verdict} it)."),
        "",
        (f"Control: FFCV / torchvision reading JPEGs pre-resized to {side} (the pixels the "
         f".beton holds, as files) = {result['ratio_presized']:.2f}x: the part of the speed-up "
         "that comes from the loader itself rather than from storing smaller images."),
        "",
        ("What the ratio measures: FFCV decodes small pre-resized JPEGs with libjpeg-turbo and "
         "crops, flips and normalizes in compiled numba code on threads; torchvision decodes "
         "each full-size JPEG with PIL, resizes it and transforms it in Python worker "
         "processes. The warm-up column is FFCV's one-time JIT compilation and the "
         "DataLoader's worker start."),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bnnbench.bench.dataloading",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--min-side", type=int, default=300)
    parser.add_argument("--max-side", type=int, default=500)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "bnnbench.bench.dataloading", *given])
    with tempfile.TemporaryDirectory(prefix="bnnbench-bench-") as tmp:
        result = run_bench(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, render(result, args, command))
    print(f"ffcv {result['rate']['ffcv']:.1f} images/s, torchvision "
          f"{result['rate']['torchvision']:.1f} images/s, ratio {result['ratio']:.2f}x "
          f"(pre-resized control {result['ratio_presized']:.2f}x) -> {args.out}")
    return result


if __name__ == "__main__":
    main()
