"""A run directory is one run's: claimed before anything is written, its config written before
training and carried by every checkpoint, so a killed run is never evaluated as another model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig

from bnnbench.errors import BnnbenchError
from bnnbench.evaluate import evaluate_run
from bnnbench.export import export_run
from bnnbench.train import run
from bnnbench.trained import load_trained
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnnbench", *args]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before writing {path}: "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.2)


def test_a_killed_run_keeps_its_config_and_a_relaunch_rewrites_nothing(tmp_path):
    """BinaryNet killed mid-training; the full-precision MLP relaunched into its directory is
    refused before writing anything, and the directory still evaluates as the BinaryNet."""
    run_dir = tmp_path / "run"
    slow = ["trainer.max_epochs=1000", "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1", "trainer.accelerator=cpu", "logger=csv",
            "model.hidden_features=64"]
    proc = subprocess.Popen(cli("+method=bnn", *slow, f"hydra.run.dir={run_dir}"), cwd=tmp_path,
                            text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    time.sleep(1.0)  # a few more epochs
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "metrics.json").exists()
    # the killed run's directory says what it was training, before and after the relaunch
    assert "BinaryNet" in (run_dir / "config_resolved.yaml").read_text()
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
              if p.is_file() and p.suffix in (".yaml", ".json")}
    assert Path(".hydra/config.yaml") in before

    relaunch = subprocess.run(cli(*FAST, f"hydra.run.dir={run_dir}"), cwd=tmp_path, text=True,
                              capture_output=True, timeout=600)
    assert relaunch.returncode == 2, relaunch.stderr[-2000:]
    assert relaunch.stderr.startswith("bnnbench: error:") and relaunch.stderr.count("\n") == 1
    assert "unfinished run of another config" in relaunch.stderr
    assert "Traceback" not in relaunch.stderr
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
             if p.is_file() and p.suffix in (".yaml", ".json")}
    assert after == before
    _, spec, _ = load_trained(run_dir)
    assert (spec["method"]["name"], spec["model"]["kwargs"]["hidden_features"]) == ("bnn", 64)


@pytest.fixture
def finished_run(make_cfg) -> Path:
    run(make_cfg(["+method=bnn", *FAST, "model.hidden_features=128"]))
    return Path(HydraConfig.get().runtime.output_dir)


@pytest.mark.parametrize("edit, section", [
    (lambda cfg: cfg.pop("method"), "method"),  # the fp MLP has the same state_dict keys
    (lambda cfg: cfg["model"].update(hidden_features=64), "model"),
])
def test_a_changed_run_config_is_refused_not_evaluated_as_another_model(finished_run, edit,
                                                                        section):
    config = finished_run / "config_resolved.yaml"
    cfg = yaml.safe_load(config.read_text())
    edit(cfg)
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(BnnbenchError, match=f"was trained as {section} "):
        evaluate_run(finished_run)
    with pytest.raises(BnnbenchError, match=f"was trained as {section} "):
        export_run(finished_run)
    assert not list(finished_run.glob("eval*.json")) and not list(finished_run.glob("packed*"))


def test_every_checkpoint_carries_the_spec_it_was_trained_with(finished_run):
    for name in ("last", "best"):
        ckpt = torch.load(finished_run / "checkpoints" / f"{name}.ckpt", weights_only=True)
        spec = ckpt["bnnbench_spec"]
        assert spec["method"]["name"] == "bnn" and spec["model"]["name"] == "mlp"
        assert spec["model"]["kwargs"]["hidden_features"] == 128
        assert spec["data"]["name"] == "mnist5k"


def test_a_claim_is_exclusive_and_tells_a_live_run_from_a_killed_one(tmp_path):
    from bnnbench.rundir import claim_run_dir, release_run_dir

    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time\nfrom bnnbench.rundir import claim_run_dir\n"
                                "claim_run_dir(sys.argv[1]); print('claimed', flush=True); "
                                "time.sleep(600)"),
         str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(BnnbenchError, match="another run is training in .* right now"):
            claim_run_dir(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # the holder died: its directory is a killed run's, taken over to resume it
    assert claim_run_dir(tmp_path / "run") is True
    release_run_dir(tmp_path / "run")


def test_two_runs_started_together_into_one_directory_cannot_both_run(tmp_path):
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen(cli(*FAST, f"seed={i}", f"hydra.run.dir={run_dir}"), cwd=tmp_path,
                              text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, err in results]
    loser = next(err for code, err in results if code == 2)
    assert loser.startswith("bnnbench: error:") and loser.count("\n") == 1
    assert "another run is training" in loser or "already holds a run that finished" in loser


# ---------------------------------------------------------------------------------- resume
RESUMABLE = ["+method=bnn", "trainer.max_epochs=4", "+trainer.limit_train_batches=4",
             "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=2",
             "trainer.accelerator=cpu", "logger=csv", "model.hidden_features=64"]
COMPARED = ("test_top1", "test_top5", "best_val_top1", "epochs", "config_hash", "num_params")


def comparable(run_dir: Path) -> dict:
    import json

    record = json.loads((run_dir / "metrics.json").read_text())
    return {**{k: record[k] for k in COMPARED}, "curves": record["curves"]}


def test_rerunning_a_killed_run_resumes_it_with_the_same_metrics(tmp_path):
    """SIGKILL after the first epoch's checkpoint, the same command again: the run resumes from
    checkpoints/last.ckpt and records what an uninterrupted run with the same seed records."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(cli(*RESUMABLE, f"hydra.run.dir={whole}"), cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen(cli(*RESUMABLE, f"hydra.run.dir={killed}"), cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(killed / "checkpoints" / "last.ckpt", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "metrics.json").exists(), "killed too late: the run had finished"
    kept = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]

    resumed = subprocess.run(cli(*RESUMABLE, f"hydra.run.dir={killed}"), cwd=tmp_path, text=True,
                             capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert kept < 3 and "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    assert comparable(killed) == comparable(whole)
    # a finished run is still refused
    again = subprocess.run(cli(*RESUMABLE, f"hydra.run.dir={killed}"), cwd=tmp_path, text=True,
                           capture_output=True, timeout=600)
    assert again.returncode == 2 and "already holds a run that finished" in again.stderr


def test_ckpt_path_resumes_from_any_checkpoint_of_the_same_model(make_cfg):
    first = run(make_cfg(["+method=bnn", *FAST, "model.hidden_features=64"]))
    ckpt = Path(HydraConfig.get().runtime.output_dir) / "checkpoints" / "last.ckpt"
    longer = [o.replace("max_epochs=1", "max_epochs=2") for o in FAST]
    second = run(make_cfg(["+method=bnn", *longer, "model.hidden_features=64",
                           f"ckpt_path={ckpt}"]))
    # one more epoch on top of the first run's: its curves continue the first run's
    assert second.epochs == 2 and len(second.curves["val/top1"]) == 2
    assert second.curves["val/top1"][0] == first.curves["val/top1"][0]
    with pytest.raises(BnnbenchError, match="was trained as method 'bnn'"):
        run(make_cfg([*longer, "model.hidden_features=64", f"ckpt_path={ckpt}"]))
    with pytest.raises(BnnbenchError, match=r"does not match the model .* other shapes"):
        run(make_cfg(["+method=bnn", *longer, "model.hidden_features=64", "data=synthetic",
                      "data.in_chans=1", "data.img_size=28", "data.num_classes=7",
                      f"ckpt_path={ckpt}"]))
    with pytest.raises(BnnbenchError, match="is not a file"):
        run(make_cfg([*longer, f"ckpt_path={ckpt.with_name('nosuch.ckpt')}"]))


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    many = [o.replace("max_epochs=4", "max_epochs=1000") for o in RESUMABLE]
    proc = subprocess.Popen(cli(*many, f"hydra.run.dir={run_dir}"), cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    os.kill(proc.pid, signal.SIGTERM)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("bnnbench: error:")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0] and "Traceback" not in stderr
    preempted = torch.load(run_dir / "checkpoints" / "preempted.ckpt", weights_only=True)
    assert preempted["bnnbench_spec"]["method"]["name"] == "bnn"
    assert not (run_dir / "metrics.json").exists()
    short = [o.replace("max_epochs=1000", f"max_epochs={preempted['epoch'] + 2}") for o in many]
    # another max_epochs is another config: refused, not resumed
    other = subprocess.run(cli(*short, f"hydra.run.dir={run_dir}"), cwd=tmp_path, text=True,
                           capture_output=True, timeout=600)
    assert other.returncode == 2 and "trainer.max_epochs" in other.stderr
    # the preempted checkpoint continues anywhere with ckpt_path
    resumed = subprocess.run(cli(*short, f"ckpt_path={run_dir}/checkpoints/preempted.ckpt",
                                 f"hydra.run.dir={tmp_path}/continued"), cwd=tmp_path, text=True,
                             capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    import json

    assert json.loads((tmp_path / "continued" / "metrics.json").read_text())["epochs"] == \
        preempted["epoch"] + 2
