"""ImageNet through FFCV: the writer on a small generated ImageFolder, the loaders, one-line errors,
one epoch of ``model=nin data=imagenet`` through the CLI, and the data-loading benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bnnbench.bench.dataloading import make_image_folder
from bnnbench.data.write_ffcv import write_imagenet
from bnnbench.errors import BnnbenchError
from tests.conftest import compose_config

# Without the extra (the README's test command) these skip with one line; .ci/run installs FFCV's
# system libraries and the extra, so CI runs them. ImportError: also an install whose shared
# libraries are missing.
pytest.importorskip("ffcv", exc_type=ImportError,
                    reason="needs the ffcv extra and its system libraries (.ci/run installs both)")

# numba's dispatcher finalizer can raise a KeyError while FFCV's compiled pipelines are garbage
# collected; pytest reports it as an unraisable-exception warning. It is noise, not a failure.
pytestmark = [pytest.mark.ffcv,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 4, 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def betons(tmp_path_factory) -> Path:
    """A 3-class ImageFolder of generated JPEGs (60-120 px) written by the project's writer CLI."""
    tmp = tmp_path_factory.mktemp("imagenet")
    make_image_folder(tmp / "src" / "train", CLASSES, TRAIN_PER_CLASS, 60, 120, seed=0)
    make_image_folder(tmp / "src" / "val", CLASSES, VAL_PER_CLASS, 60, 120, seed=1)
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench.data.write_ffcv", "--src", str(tmp / "src"), "--out",
         str(tmp / "ffcv"), "--max-resolution", "48", "--jpeg-quality", "90", "--num-workers",
         "1"], text=True, capture_output=True, timeout=300, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 12 train and 6 val images" in proc.stdout
    return tmp / "ffcv"


def imagenet(tmp_path: Path, root: Path, *overrides: str):
    cfg = compose_config(["data=imagenet", f"data.root={root}", "data.num_classes=3",
                          "data.num_workers=1", *overrides], tmp_path / "cfg")
    return instantiate(cfg.data)


def test_writer_writes_both_splits_and_the_class_list(betons):
    assert (betons / "train.beton").is_file() and (betons / "val.beton").is_file()
    meta = json.loads((betons / "classes.json").read_text())
    assert meta["classes"] == ["class_0", "class_1", "class_2"]
    assert meta["counts"] == {"train": 12, "val": 6} and meta["resize"] == "square"


def test_loaders_give_normalized_float_batches(tmp_path, betons):
    dm = imagenet(tmp_path, betons, "data.img_size=32", "data.batch_size=4")
    assert (dm.in_chans, dm.num_classes, dm.img_size) == (3, 3, 32)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 3  # 12 images, batch 4, random order, drop_last
    x, y = train[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in train]).tolist()) == sorted([0, 1, 2] * 4)
    # mean subtraction on the 0..255 scale (std 1): values lie in [-mean, 255 - mean]
    assert x.min() >= -123.675 - 1e-3 and x.max() <= 255 - 103.53 + 1e-3 and x.std() > 1
    # evaluation: sequential center crops, the same every pass, reused for test
    first = list(dm.val_dataloader())
    second = list(dm.test_dataloader())
    assert torch.cat([b[1] for b in first]).tolist() == [0, 0, 1, 1, 2, 2]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


def test_missing_beton_is_one_line_naming_the_path(tmp_path):
    dm = imagenet(tmp_path, tmp_path / "nothing")
    with pytest.raises(BnnbenchError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message and str((tmp_path / "nothing" / "train.beton").resolve()) in message
    assert "python -m bnnbench.data.write_ffcv" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_beton_is_one_line(tmp_path, betons, damage):
    root = tmp_path / "broken"
    root.mkdir()
    data = (betons / "val.beton").read_bytes()
    (root / "val.beton").write_bytes(data)
    bad = {"garbage": os.urandom(4096), "truncated": data[: len(data) // 3], "empty": b""}[damage]
    (root / "train.beton").write_bytes(bad)
    with pytest.raises(BnnbenchError, match="is not a readable FFCV .beton") as err:
        imagenet(tmp_path, root).setup("fit")
    assert "\n" not in str(err.value) and str((root / "train.beton").resolve()) in str(err.value)


def test_num_classes_must_cover_the_labels(tmp_path, betons):
    with pytest.raises(BnnbenchError, match="data.num_classes=3 or more"):
        imagenet(tmp_path, betons, "data.num_classes=2").setup("fit")


def test_writer_rejects_a_tree_without_splits_or_with_different_classes(tmp_path):
    with pytest.raises(BnnbenchError, match="must hold train/ and val/"):
        write_imagenet(tmp_path / "nothing", tmp_path / "out")
    make_image_folder(tmp_path / "src" / "train", 2, 1, 20, 30)
    make_image_folder(tmp_path / "src" / "val", 3, 1, 20, 30)
    with pytest.raises(BnnbenchError, match="different class folders"):
        write_imagenet(tmp_path / "src", tmp_path / "out")


def test_cli_trains_one_epoch_of_nin_on_imagenet_files(tmp_path, betons):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench", "model=nin", "data=imagenet", f"data.root={betons}",
         "data.img_size=64", "data.num_classes=3", "data.batch_size=4", "data.num_workers=1",
         "trainer.max_epochs=1", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, text=True, capture_output=True, timeout=600, env=ENV,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["model"] == "nin" and record["data"] == "imagenet"
    assert 0 <= record["test_top1"] <= record["test_top5"] <= 100
    assert len(record["curves"]["train/loss"]) == 1


def test_dataloading_bench_writes_its_report(tmp_path):
    from bnnbench.bench import dataloading

    out = tmp_path / "dataloading.md"
    result = dataloading.main(["--num-images", "8", "--classes", "2", "--min-side", "64",
                               "--max-side", "96", "--resize", "48", "--img-size", "32",
                               "--batch-size", "4", "--num-workers", "1", "--epochs", "1",
                               "--out", str(out)])
    text = out.read_text()
    assert result["ratio"] > 0 and f"{result['ratio']:.2f}x" in text
    assert "python -m bnnbench.bench.dataloading --num-images 8" in text
    assert dataloading.cpu_model() in text


def test_loaders_shard_when_torch_distributed_is_initialized(tmp_path, betons):
    """Under DDP the loaders are built with FFCV's distributed=True (here a 1-process gloo group)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        dm = imagenet(tmp_path, betons, "data.img_size=32", "data.batch_size=4")
        dm.setup("fit")
        train, val = dm.train_dataloader(), dm.val_dataloader()
        assert train.distributed and val.distributed
        assert sum(len(y) for _, y in train) == 12 and sum(len(y) for _, y in val) == 6
    finally:
        dist.destroy_process_group()
