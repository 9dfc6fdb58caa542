"""Bad input and divergence (issue 11): one line naming the key or file, never a traceback, and a
run record that says what happened; every file bnnbench writes is written atomically."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from bnnbench.data import create_data
from bnnbench.errors import BnnbenchError, check_knobs, check_range
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.train import run
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
MNIST_GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 28}


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


# --- non-finite and non-numeric values ------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=inf", "optimizer.lr=inf is not a finite number"),
    ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
    ("optimizer.lr=[1]", "optimizer.lr=[1] is not valid: need a finite number"),
    ("optimizer.lr=abc", "optimizer.lr='abc' is not valid: need a finite number"),
    ("optimizer.weight_decay=-inf", "optimizer.weight_decay=-inf is not a finite number"),
    ("+optimizer.betas=[2,0.9]", "Invalid beta parameter"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not valid: need an integer"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 is not valid: need an integer"),
    ("trainer.deterministic=3", "trainer.deterministic=3 is not valid"),
    ("seed=1.5", "seed=1.5 is not an integer"),
    ("data.batch_size=1.5", "data.batch_size=1.5 is not valid: need an integer"),
    ("data.batch_size=true", "data.batch_size=True is not valid: need an integer"),
    ("+data.split_per_class=[1,2]", "data.split_per_class=[1, 2] is not valid"),
    ("+data.split_per_class=[400,50,100]", "asks for 550 examples"),
    ("data.split_seed=-1", "data.split_seed=-1 is out of range"),
    ("model.hidden_features=0", "model.hidden_features=0 is out of range"),
    ("model.hidden_features=1.5", "model.hidden_features=1.5 is not valid: need an integer"),
    ("model.depth=abc", "model.depth='abc' is not valid: need an integer"),
    ("model.dropout_in=2", "model.dropout_in=2 is out of range"),
    ("model.dropout_hidden=nan", "model.dropout_hidden=nan is not a finite number"),
    ("+method=bnn method.stochastic=1", "method.stochastic=1 is not valid: need true or false"),
    ("+method=dorefa method.w_bits=1.5", "method.w_bits=1.5 is not valid: need an integer"),
    ("+method=tang method.scale_init=inf", "method.scale_init=inf is not a finite number"),
    ("+method=tang method.latent_clip=[1]", "method.latent_clip=[1] is not valid"),
    ("scheduler=binarynet scheduler.lr_end=0", "scheduler.lr_end=0 is out of range"),
    ("scheduler=multistep scheduler.gamma=abc", "scheduler.gamma='abc' is not valid"),
])
def test_bad_values_are_refused_before_training(make_cfg, override, message):
    with pytest.raises(BnnbenchError, match=re.escape(message)):
        run(make_cfg([*FAST, *override.split()]))  # FAST: a miss would train briefly
    assert not (run_dir() / "checkpoints").exists()
    assert not (run_dir() / "metrics.json").exists()


@pytest.mark.parametrize("build, message", [
    (lambda: create_model("mlp", **MNIST_GEOMETRY, hidden_features=1.5),
     "model.hidden_features=1.5"),
    (lambda: create_model("vgg_small", in_chans=3, num_classes=10, img_size=32, widths=[8, 0, 8]),
     "model.widths[1]=0 is out of range"),
    (lambda: create_method("bnn", fp_first="yes"), "method.fp_first='yes'"),
    (lambda: create_method("abcnet", weight_bases=[3]), "method.weight_bases=[3]"),
    (lambda: create_data("mnist5k", batch_size=2.5), "data.batch_size=2.5"),
    (lambda: create_data("cifar10", std=[0.2, 0.0, 0.2]), "data.std[1]=0.0 is out of range"),
    (lambda: create_data("cifar10", mean=[0.5]), "data.mean=[0.5] must hold 3 values"),
    (lambda: create_data("synthetic", class_signal=float("nan")), "data.class_signal=nan"),
])
def test_the_registries_check_knobs_for_every_entry_point(build, message):
    """evaluate and export build through the same registries as training."""
    with pytest.raises(BnnbenchError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("value, ok", [
    (3, True), (3.0, False), (True, False), ("3", False), (None, True), ([3], False)])
def test_check_knobs_reads_optional_int_annotations(value, ok):
    def target(*, count: int | None = None) -> None: ...

    if ok:
        check_knobs("x", target, {"count": value})
    else:
        with pytest.raises(BnnbenchError, match=r"x\.count=.* need an integer or null"):
            check_knobs("x", target, {"count": value})


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1", [1], True, None])
def test_check_range_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(BnnbenchError, match="^k="):
        check_range("k", value, low=0)


def test_cli_refuses_a_non_finite_lr_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnnbench", "optimizer.lr=inf",
                           f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["bnnbench: error: optimizer.lr=inf is not a "
                                                "finite number"]
