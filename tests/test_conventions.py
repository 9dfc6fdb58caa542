"""lightning-hydra-template's conventions, from the shipped YAML: callbacks/, debug/, paths/,
tags=, logger=tensorboard with the lr monitor, and the summary every run ends with."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import open_dict, read_write

from bnnbench.callbacks import FlipRatio
from bnnbench.errors import BnnbenchError
from bnnbench.record import RunRecord
from bnnbench.summary import summary_lines
from bnnbench.train import optional_callbacks, report_dir, run, tags_of
from tests.conftest import CONF, FAST

CALLBACK_TYPES = {
    "model_checkpoint": pl.callbacks.ModelCheckpoint,
    "last_checkpoint": pl.callbacks.ModelCheckpoint,
    "lr_monitor": pl.callbacks.LearningRateMonitor,
    "rich_progress_bar": pl.callbacks.RichProgressBar,
    "early_stopping": pl.callbacks.EarlyStopping,
    "flip_ratio": FlipRatio,
}
DEFAULT = ["model_checkpoint", "last_checkpoint", "lr_monitor", "rich_progress_bar"]


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@pytest.mark.parametrize("override, names", [
    (None, DEFAULT),
    ("callbacks=default", DEFAULT),
    ("callbacks=early_stopping", [*DEFAULT, "early_stopping"]),
    ("callbacks=flip_ratio", [*DEFAULT, "flip_ratio"]),
    ("callbacks=[early_stopping,flip_ratio]", [*DEFAULT, "early_stopping", "flip_ratio"]),
    ("callbacks=none", []),
    ("callbacks.lr_monitor=null", ["model_checkpoint", "last_checkpoint", "rich_progress_bar"]),
])
def test_callbacks_group_builds_its_entries(make_cfg, override, names):
    cfg = make_cfg([override] if override else [])
    built = optional_callbacks(cfg, run_dir(), has_logger=True)
    assert [type(c) for c in built] == [CALLBACK_TYPES[n] for n in names]
    for callback in built:
        if isinstance(callback, pl.callbacks.ModelCheckpoint):  # README's best/last layout
            assert Path(callback.dirpath) == (run_dir() / "checkpoints").resolve()
            assert (callback.filename, callback.monitor, callback.save_last) in {
                ("best", "val/top1", None), ("last", None, None)}
        if isinstance(callback, pl.callbacks.EarlyStopping):
            assert (callback.monitor, callback.mode) == ("val/top1", "max")


def test_lr_monitor_is_left_out_without_a_logger(make_cfg):
    built = optional_callbacks(make_cfg(["~logger"]), run_dir(), has_logger=False)
    assert pl.callbacks.LearningRateMonitor not in {type(c) for c in built}


@pytest.mark.parametrize("override, message", [
    ("callbacks.model_checkpoint.dirpath=/tmp/elsewhere", "must be the run's checkpoints/"),
    ("+callbacks.model_checkpoint.no_such_arg=1", "callbacks.model_checkpoint: "),
    ("+callbacks.mine=3", "callbacks.mine has no _target_"),
    ("+callbacks.mine._target_=collections.OrderedDict", "is not a Lightning callback"),
])
def test_bad_callback_entries_are_one_line(make_cfg, override, message):
    with pytest.raises(BnnbenchError, match=message.replace(".", r"\.")) as err:
        optional_callbacks(make_cfg([override]), run_dir(), has_logger=True)
    assert "\n" not in str(err.value)


def compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_paths_root_dir_moves_runs_multiruns_and_data():
    cfg = compose_with_hydra(["paths.root_dir=/scratch/bnn", "data=mnist"])
    assert cfg.hydra.run.dir.startswith("/scratch/bnn/runs/")
    assert cfg.hydra.sweep.dir.startswith("/scratch/bnn/multirun/")
    assert cfg.data.root == "/scratch/bnn/data"
    default = compose_with_hydra(["data=imagenet"])
    assert default.hydra.run.dir.startswith("./runs/")
    assert default.data.root == "./data/imagenet_ffcv"
    assert compose_with_hydra(["data=mnist", "data.root=/elsewhere"]).data.root == "/elsewhere"


@pytest.mark.parametrize("override, trainer", [
    ("debug=default", {"max_epochs": 1, "accelerator": "cpu", "devices": 1,
                       "detect_anomaly": True}),
    ("debug=fdr", {"fast_dev_run": True, "accelerator": "cpu", "devices": 1}),
    ("debug=overfit", {"overfit_batches": 3, "max_epochs": 20, "detect_anomaly": True}),
])
def test_debug_group_sets_the_trainer(make_cfg, override, trainer):
    # over a DDP trainer and early stopping: debugging is one process, and overfitting never stops
    cfg = make_cfg([override, "trainer=ddp", "callbacks=early_stopping", "data=cifar10"])
    assert {k: cfg.trainer[k] for k in trainer} == trainer
    assert cfg.data.num_workers == 0 and tags_of(cfg) == ["debug"]
    built = instantiate(cfg.trainer, logger=False)  # Lightning accepts every key
    assert built.world_size == 1
    names = [k for k, v in cfg.callbacks.items() if v is not None]
    assert ("early_stopping" in names) == (override != "debug=overfit")


@pytest.mark.parametrize("override, tags", [
    (None, []), ("tags=[ablation,lr]", ["ablation", "lr"]), ("tags=one", ["one"]),
])
def test_tags(make_cfg, override, tags):
    assert tags_of(make_cfg([override] if override else [])) == tags


def test_tags_and_callbacks_and_paths_are_not_the_recipe(make_cfg):
    base = run(make_cfg(["debug=fdr", "trainer.accelerator=cpu"]))
    other = run(make_cfg(["debug=fdr", "trainer.accelerator=cpu", "tags=[x]",
                          "callbacks=flip_ratio"]))
    assert base.config_hash == other.config_hash
    assert base.extra["tags"] == ["debug"] and other.extra["tags"] == ["x"]


def test_fast_dev_run_writes_a_record(make_cfg):
    record = run(make_cfg(["+method=bnn", "debug=fdr"]))
    saved = json.loads((run_dir() / "metrics.json").read_text())
    assert saved["extra"]["tags"] == ["debug"] and record.epochs == 1
    assert len(saved["curves"]["val/top1"]) == 1
    assert saved["best_val_top1"] == round(saved["curves"]["val/top1"][0], 4)
    assert not (run_dir() / "csv").exists()  # fast_dev_run logs to Lightning's dummy logger


def test_callbacks_none_trains_without_checkpoints(make_cfg, capsys):
    """No ModelCheckpoint: Lightning must not add its own default one (in the logger's folder)."""
    record = run(make_cfg([*FAST, "callbacks=none"]))
    assert not list(run_dir().rglob("*.ckpt"))
    assert record.best_val_top1 == round(record.curves["val/top1"][0], 4)
    assert "checkpoints   none" in capsys.readouterr().out


def test_tensorboard_logger_composes_and_writes_offline(make_cfg):
    cfg = make_cfg(["logger=tensorboard"])
    logger = instantiate(cfg.logger)
    assert isinstance(logger, pl.loggers.TensorBoardLogger)
    assert Path(logger.log_dir) == run_dir() / "tensorboard"


def tfrecord_tags(path: Path) -> set[str]:
    """Scalar tags in a TensorBoard event file (TFRecord framing, parsed here, not by the writer's
    library): u64 length, u32 crc, payload, u32 crc."""
    from tensorboardX.proto.event_pb2 import Event

    data, tags, offset = path.read_bytes(), set(), 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = Event.FromString(data[offset + 12: offset + 12 + length])
        offset += 12 + length + 4
        tags.update(v.tag for v in event.summary.value)
    return tags


def test_tensorboard_fit_then_test_in_the_same_second_keeps_both_files(make_cfg, monkeypatch):
    """tensorboardX names event files by the second: a test stage reopening the writer within the
    second of the fit's close used to truncate the fit's file (seen in CI: no lr tag left)."""
    import tensorboardX.event_file_writer as efw

    monkeypatch.setattr(efw.time, "time", lambda: 1_700_000_000.0)
    logger = instantiate(make_cfg(["logger=tensorboard"]).logger)
    logger.log_metrics({"fit/x": 1.0}, step=0)
    logger.finalize("success")
    logger.log_metrics({"test/x": 2.0}, step=0)
    logger.finalize("success")
    files = list((run_dir() / "tensorboard").glob("events.out.tfevents.*"))
    assert set().union(*(tfrecord_tags(f) for f in files)) >= {"fit/x", "test/x"}


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_lr_reaches_the_logger(make_cfg, logger):
    """LearningRateMonitor: one lr per parameter group (BinaryNet's Glorot scale differs per
    layer) in the logger's own files."""
    run(make_cfg(["+method=bnn", *FAST, f"logger={logger}"]))
    if logger == "csv":
        header = (run_dir() / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        lrs = [h for h in header if h.startswith("lr-")]
    else:
        lrs = [t for f in (run_dir() / "tensorboard").glob("events.out.tfevents.*")
               for t in tfrecord_tags(f) if t.startswith("lr-")]
    assert len(set(lrs)) >= 2, lrs


def record(**changes) -> RunRecord:
    fields = dict(method="bnn", model="mlp", data="mnist5k", seed=3, test_top1=94.1234,
                  test_top5=99.5, best_val_top1=95.0, num_params=10, epochs=2, wall_time_s=61.27,
                  epoch_time_s=[1.0, 1.0], curves={}, config_hash="x", git_commit="y",
                  device="cpu x1 (singledevice)",
                  extra={"size": {"total_bytes": 3 * 2**20, "fp32_bytes": 96 * 2**20,
                                  "compression": 32.0}})
    return RunRecord(**{**fields, **changes})


def test_summary_says_result_size_places_and_next_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "d" / "t"
    ckpts = [out / "checkpoints" / "best.ckpt", out / "checkpoints" / "last.ckpt"]
    text = "\n".join(summary_lines(record(), out, ckpts, out))
    for expected in ("test top-1    94.12 %", "top-5 99.50 %", "2 epochs in 61.3 s",
                     "3.000 MiB, compression 32.0x (float32: 96.000 MiB)",
                     "run dir       runs/d/t", "metrics       runs/d/t/metrics.json",
                     "runs/d/t/checkpoints/best.ckpt, runs/d/t/checkpoints/last.ckpt",
                     "python -m bnnbench.evaluate run_dir=runs/d/t",
                     "python -m bnnbench.export run_dir=runs/d/t",
                     "python -m bnnbench.report runs/d/t"):
        assert expected in text, expected
    bare = "\n".join(summary_lines(record(), Path("/x y/r"), [], Path("/x y")))
    assert "checkpoints   none" in bare
    assert "bnnbench.evaluate" not in bare and "bnnbench.export" not in bare
    assert "python -m bnnbench.report '/x y'" in bare  # quoted for the shell


def test_report_dir_is_the_sweep_in_a_multirun(make_cfg):
    cfg = make_cfg([])
    assert report_dir(run_dir()) == run_dir()
    hydra = HydraConfig.get()
    with read_write(hydra), open_dict(hydra):
        hydra.mode = RunMode.MULTIRUN
        hydra.sweep.dir = "/sweeps/s1"
    assert report_dir(run_dir() / "0_x") == Path("/sweeps/s1") and cfg is not None


@pytest.mark.slow
def test_cli_ends_with_the_summary(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench", "+method=bnn", *FAST, "logger=tensorboard",
         "callbacks=flip_ratio", "tags=[smoke]", "hydra.run.dir=runs/one"],
        cwd=tmp_path, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "runs" / "one" / "metrics.json").read_text())
    tail = proc.stdout[proc.stdout.index("bnn · mlp · mnist5k"):]
    assert f"test top-1    {saved['test_top1']:.2f} %" in tail
    assert f"top-5 {saved['test_top5']:.2f} %" in tail
    assert f"compression {saved['extra']['size']['compression']:.1f}x" in tail
    for command in ("bnnbench.evaluate run_dir=runs/one", "bnnbench.export run_dir=runs/one",
                    "bnnbench.report runs/one"):
        assert f"python -m {command}" in tail
    assert saved["extra"]["tags"] == ["smoke"]
    assert any(k.startswith("flip_ratio/") for k in saved["curves"])
    assert list((tmp_path / "runs" / "one" / "tensorboard").glob("events.out.tfevents.*"))
