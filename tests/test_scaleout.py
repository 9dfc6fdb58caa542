"""Scaling out: sweeps that survive their points and finish on rerun, DDP sweeps with one process
group per point, exact evaluation across DDP ranks, and the submitit launchers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from bnnbench.errors import BnnbenchError
from bnnbench.lit import eval_metrics
from bnnbench.multirun import UNRECORDED_FAILURES, run_point
from bnnbench.rundir import claim_run_dir, recipe_hash, release_run_dir
from bnnbench.trained import load_trained
from tests.conftest import CONF, FAST


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnnbench", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=1200)


def points(sweep_dir: Path) -> list[Path]:
    """The sweep's point directories (each claimed: run.json), not its report/ or .submitit/."""
    return sorted(marker.parent for marker in sweep_dir.glob("*/run.json"))


def record(point: Path) -> dict:
    return json.loads((point / "metrics.json").read_text())


# --- evaluation metrics --------------------------------------------------------------------------

def reference_accuracy(logits: np.ndarray, target: np.ndarray, k: int) -> float:
    """Percent of rows whose target is among the k largest logits (numpy, stable sort)."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return 100.0 * float(np.mean([t in row for t, row in zip(target, top)]))


@pytest.mark.parametrize("num_classes, batches", [(10, (7, 1, 32)), (3, (5, 5)), (100, (64,))])
def test_eval_metrics_are_counts_over_all_batches(num_classes, batches):
    """Uneven batches: the epoch value is correct/seen over every example, not a mean of batch
    means (a batch of 1 would weigh as much as a batch of 32)."""
    gen = torch.Generator().manual_seed(num_classes)
    metrics = eval_metrics(num_classes)
    all_logits, all_target, losses = [], [], []
    for n in batches:
        logits = torch.randn(n, num_classes, generator=gen)
        target = torch.randint(0, num_classes, (n,), generator=gen)
        loss = torch.nn.functional.cross_entropy(logits, target)
        metrics["top1"].update(logits, target)
        metrics["top5"].update(logits, target)
        metrics["loss"].update(loss, weight=n)
        all_logits.append(logits.numpy())
        all_target.append(target.numpy())
        losses.append(loss.item() * n)
    logits, target = np.concatenate(all_logits), np.concatenate(all_target)
    assert metrics["top1"].compute().item() == pytest.approx(
        reference_accuracy(logits, target, 1), abs=1e-4)
    assert metrics["top5"].compute().item() == pytest.approx(
        reference_accuracy(logits, target, min(5, num_classes)), abs=1e-4)
    assert metrics["loss"].compute().item() == pytest.approx(sum(losses) / len(target), rel=1e-5)


# --- a sweep point in isolation ------------------------------------------------------------------

@pytest.fixture
def point_dir(make_cfg):
    cfg = make_cfg(FAST)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    yield cfg, run_dir
    release_run_dir(run_dir)
    UNRECORDED_FAILURES.clear()


def test_a_crashing_point_is_recorded_and_does_not_raise(point_dir):
    cfg, run_dir = point_dir
    claim_run_dir(run_dir)

    def crash(_cfg):
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    assert run_point(cfg, crash) is None
    saved = record(run_dir)
    assert saved["status"] == "failed"
    assert saved["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert saved["config_hash"] == recipe_hash(cfg) and saved["test_top1"] is None
    assert saved["method"] == "fp" and saved["model"] == "mlp" and saved["data"] == "mnist5k"


def test_a_failed_point_is_retried_in_its_directory_but_a_finished_one_is_not(point_dir):
    cfg, run_dir = point_dir
    claim_run_dir(run_dir)

    def bad_input(_cfg):
        raise BnnbenchError("optimizer.lr=-1 is out of range")

    run_point(cfg, bad_input)
    assert record(run_dir)["error"] == "optimizer.lr=-1 is out of range"
    release_run_dir(run_dir)
    assert claim_run_dir(run_dir) is True  # a failed point's directory is taken over (resume)
    release_run_dir(run_dir)
    finished = record(run_dir) | {"status": "finished", "error": None}
    (run_dir / "metrics.json").write_text(json.dumps(finished))
    with pytest.raises(BnnbenchError, match="already holds a run that finished"):
        claim_run_dir(run_dir)


def test_a_point_never_writes_over_another_runs_record(point_dir):
    cfg, run_dir = point_dir
    claim_run_dir(run_dir)
    other = {"status": "finished", "test_top1": 91.0}
    (run_dir / "metrics.json").write_text(json.dumps(other))

    def crash(_cfg):
        raise RuntimeError("boom")

    run_point(cfg, crash)
    assert record(run_dir) == other
    assert UNRECORDED_FAILURES[run_dir.resolve()] == "RuntimeError: boom"


# --- whole sweeps --------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_survives_a_failed_point_and_a_rerun_finishes_it(tmp_path):
    """Point 1 fails (bad lr): point 0 still finishes, the failure is recorded, the sweep exits 1.
    A rerun into the same sweep dir skips point 0 (its record untouched) and retries point 1; a
    point killed after its last checkpoint resumes from it (its epoch times come back from the
    checkpoint: nothing is retrained)."""
    sweep = tmp_path / "sweep"
    # a '/' in a value and a location override must not nest the point directories
    args = ["-m", "optimizer.lr=1e-3,-1", *FAST, f"hydra.sweep.dir={sweep}", "tags=[a/b]",
            f"paths.data_dir={tmp_path}/data"]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    done, failed = points(sweep)
    assert done.parent == sweep and "tags=[a_b]" in done.name, done
    assert "paths.data_dir" not in done.name
    assert record(done)["status"] == "finished" and record(done)["test_top1"] > 0
    assert record(failed)["status"] == "failed"
    assert "optimizer.lr=-1 is out of range" in record(failed)["error"]
    assert "1 sweep point(s)" in first.stderr and f"hydra.sweep.dir={sweep}" in first.stderr

    finished = (done / "metrics.json").read_bytes()
    second = cli(*args, cwd=tmp_path)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "skipped" in second.stdout
    assert (done / "metrics.json").read_bytes() == finished
    assert record(failed)["status"] == "failed"

    (done / "metrics.json").unlink()  # as if killed after writing its last checkpoint
    third = cli(*args, cwd=tmp_path)
    assert third.returncode == 1, third.stderr[-3000:]
    resumed, original = record(done), json.loads(finished)
    for key in ("test_top1", "test_top5", "curves", "epoch_time_s", "config_hash"):
        assert resumed[key] == original[key], key


def predictions_accuracy(point: Path, split: str) -> tuple[float, float]:
    """Top-1/top-5 of the point's last checkpoint on a synthetic split, in one process."""
    from bnnbench.data.synthetic import SyntheticData

    net, _, _ = load_trained(point)
    data_args = yaml.safe_load((point / "config_resolved.yaml").read_text())["data"]
    data_args.pop("_target_")
    data = SyntheticData(**data_args)
    data.setup()
    images, labels = getattr(data, f"{split}_set").tensors
    with torch.no_grad():
        logits = net.eval()(images).numpy()
    return (reference_accuracy(logits, labels.numpy(), 1),
            reference_accuracy(logits, labels.numpy(), 5))


DDP_SWEEP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
             "trainer.max_epochs=1", "logger=csv", "data=synthetic", "data.in_chans=1",
             "data.img_size=8", "data.num_samples=64", "data.num_val=7", "data.num_test=7",
             "data.batch_size=16", "model.hidden_features=32"]


@pytest.mark.slow
def test_ddp_sweep_one_process_group_per_point_and_exact_counts(tmp_path):
    """Two DDP points, two gloo ranks each: every point trains in its own group into its own
    directory (no phantom sweep, no run directory elsewhere), and 7 test/val images split 4 + 3
    over the ranks score as 7 (k/7, equal to the checkpoint's accuracy in one process), not as
    8 with a repeated image."""
    sweep = tmp_path / "sweep"
    proc = cli("-m", "seed=0,1", *DDP_SWEEP, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no phantom multirun/runs
    seeds = []
    for point in points(sweep):
        saved = record(point)
        seeds.append(saved["seed"])
        assert saved["device"] == "cpu x2 (ddp)"
        hits = saved["test_top1"] * 7 / 100
        assert hits == pytest.approx(round(hits), abs=1e-4)  # k of 7, not k of 8
        top1, top5 = predictions_accuracy(point, "test")
        assert (saved["test_top1"], saved["test_top5"]) == (round(top1, 4), round(top5, 4))
        assert saved["curves"]["val/top1"][0] == pytest.approx(
            predictions_accuracy(point, "val")[0], abs=1e-4)
    assert sorted(seeds) == [0, 1]


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    """hydra/launcher=local: each point in a submitit process of its own; the sweep's parent sees
    the failed point through its record and exits 1."""
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/launcher=local", "optimizer.lr=1e-3,-1", *FAST,
               f"hydra.sweep.dir={sweep}", "tags=[a/b]", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    done, failed = points(sweep)  # the job process resolves flat_dirname too
    assert done.parent == sweep and "a_b" in done.name, done
    assert record(done)["status"] == "finished" and record(done)["test_top1"] > 0
    assert record(failed)["status"] == "failed"
    assert "1 sweep point(s)" in proc.stderr
    assert (sweep / ".submitit").is_dir()


# --- the shipped launcher configs ----------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    (["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
     {"tasks_per_node": 4, "gpus_per_node": 4, "nodes": 2, "max_num_timeout": 3}),
    (["hydra/launcher=slurm"], {"tasks_per_node": 1, "nodes": 1}),
    (["hydra/launcher=local", "trainer=ddp"], {"tasks_per_node": 1, "nodes": 1}),
])
def test_launcher_configs_size_jobs_from_the_trainer(overrides, expected):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher.")
    for key, value in expected.items():
        assert launcher[key] == value, key


# --- SLURM requeue (Lightning's SLURMEnvironment, auto_requeue) ----------------------------------

@pytest.mark.slow
def test_slurm_auto_requeue_resumes_in_the_same_directory(tmp_path):
    """Inside a (simulated) SLURM job, the requeue signal saves Lightning's hpc checkpoint into the
    run directory and calls `scontrol requeue <job>`; SLURM's SIGTERM then stops the run (143),
    and the requeued job, the same command into the same directory, resumes and finishes with
    the curves it had."""
    import os
    import signal
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    scontrol.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "bnnbench",
           "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    run_dir = tmp_path / "runs" / "slurm-4242"
    command = [sys.executable, "-m", "bnnbench", "trainer.max_epochs=4",
               "+trainer.limit_train_batches=30", "+trainer.limit_val_batches=1",
               "+trainer.limit_test_batches=1", "trainer.accelerator=cpu", "logger=csv",
               f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGUSR1)
    while not (tmp_path / "scontrol.log").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert list(run_dir.glob("hpc_ckpt_*.ckpt")), "no hpc checkpoint in the run directory"
    assert not (run_dir / "metrics.json").exists()
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    curves_before = before["callbacks"]["EpochRecorder"]["curves"]

    requeued = subprocess.run(command, cwd=tmp_path, env=env, text=True, capture_output=True,
                              timeout=1200)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    saved = record(run_dir)
    assert saved["epochs"] == 4 and len(saved["curves"]["train/loss"]) == 4
    done = len(curves_before["train/loss"])
    assert 1 <= done < 4
    assert saved["curves"]["train/loss"][:done] == curves_before["train/loss"]
