"""The foundation: a run end to end, reproducibility, records, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from bnnbench.errors import BnnbenchError
from bnnbench.record import RunRecord
from bnnbench.train import run
from tests.conftest import FAST


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def test_short_fit_writes_the_run_record(make_cfg):
    cfg = make_cfg(["+method=bnn", *FAST])
    record = run(cfg)
    out = run_dir()
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test_top1", "test_top5", "best_val_top1", "curves", "num_params", "epoch_time_s",
                "seed", "git_commit", "config_hash", "wall_time_s"):
        assert key in saved, key
    assert saved["method"] == "bnn" and saved["model"] == "mlp" and saved["data"] == "mnist5k"
    assert 0 <= saved["test_top1"] <= saved["test_top5"] <= 100
    assert len(saved["curves"]["val/top1"]) == 1 and len(saved["epoch_time_s"]) == 1
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "config_resolved.yaml").exists()
    assert (out / "csv" / "metrics.csv").exists()
    assert RunRecord.read(out) == record


def test_no_method_trains_the_full_precision_reference(make_cfg):
    record = run(make_cfg(FAST))
    assert record.method == "fp"
    assert math.isfinite(record.test_top1)


def test_same_seed_same_result(make_cfg):
    first = run(make_cfg(["+method=bnn", *FAST, "seed=3"]))
    second = run(make_cfg(["+method=bnn", *FAST, "seed=3"]))
    assert first.test_top1 == second.test_top1
    assert first.curves["train/loss"] == second.curves["train/loss"]
    assert first.config_hash == second.config_hash


def test_finished_run_is_never_overwritten(make_cfg):
    cfg = make_cfg(FAST)
    run(cfg)
    before = (run_dir() / "metrics.json").read_text()
    with pytest.raises(BnnbenchError, match="already holds a run"):
        run(cfg)
    assert (run_dir() / "metrics.json").read_text() == before


@pytest.mark.parametrize("override, key", [
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-1e-3", "optimizer.lr"),
    ("data.batch_size=0", "data.batch_size"),
])
def test_invalid_values_fail_before_training(make_cfg, override, key):
    with pytest.raises(BnnbenchError, match=key.replace(".", r"\.")):
        run(make_cfg([override]))
    assert not (run_dir() / "checkpoints").exists()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnnbench", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600)


@pytest.mark.parametrize("args, expected", [
    (["+method=nosuch"], "Available options in 'method'"),
    (["model=nosuch"], "Available options in 'model'"),
    (["data=nosuch"], "Available options in 'data'"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is out of range"),
])
def test_cli_bad_input_is_one_clear_message(tmp_path, args, expected):
    proc = cli(*args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_runs_end_to_end(tmp_path):
    proc = cli("+method=bnn", *FAST, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "bnn"


def test_ddp_on_two_cpu_processes(tmp_path):
    """Real DDP: two gloo processes on CPU, Lightning's Hydra-aware launcher, one run record."""
    proc = cli("+method=bnn", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               *[o for o in FAST if not o.startswith("trainer.accelerator")],
               f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["device"] == "cpu x2 (ddp)"


def test_wandb_logger_works_offline(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    record = run(make_cfg(["+method=bnn", *FAST, "logger=wandb"]))
    assert math.isfinite(record.test_top1)
    assert list((run_dir() / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
