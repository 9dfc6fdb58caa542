"""One run, straight through: data, model, method, module, trainer, record.

Only this module and the Hydra entry points read the config object; everything they call takes
plain arguments.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.lit import BNNModule, count_parameters
from bnnbench.methods.fp import FullPrecision
from bnnbench.size import account
from bnnbench.report.record import (
    METRICS_FILE,
    EpochRecorder,
    RunRecord,
    config_hash,
    git_commit,
)

CHECKPOINT_DIR = "checkpoints"
# What metrics.json keeps of the size accounting (`python -m bnnbench.size` prints all of it).
SIZE_SUMMARY = ("total_bytes", "fp32_bytes", "compression", "binary_mac_share", "xnor_mac_share")


def validate(cfg: DictConfig) -> None:
    """Reject invalid values before anything trains, one line naming the key and its range."""
    check_range("trainer.max_epochs", cfg.trainer.max_epochs, low=1)
    check_range("optimizer.lr", cfg.optimizer.lr, low=0, low_inclusive=False)
    check_range("data.batch_size", cfg.data.batch_size, low=1)
    check_range("seed", cfg.seed, low=0)


def choice(group: str, default: str) -> str:
    """The option chosen for a config group (e.g. ``method`` -> ``bnn``) in the Hydra run."""
    value = HydraConfig.get().runtime.choices.get(group)
    return value if value is not None else default


def guard_run_dir(run_dir: Path) -> None:
    """Refuse to train into a directory that already holds a finished run or checkpoints.

    DDP workers (LOCAL_RANK > 0) are launched by rank 0 into its run directory: not checked.
    """
    if int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return
    taken = [p for p in (run_dir / METRICS_FILE, run_dir / CHECKPOINT_DIR) if p.exists()]
    if taken:
        raise BnnbenchError(f"{run_dir} already holds a run ({taken[0].name}); choose a new "
                            "hydra.run.dir instead of overwriting it")


def run(cfg: DictConfig) -> RunRecord:
    """Train, validate and test one configuration; write metrics.json beside the Hydra outputs."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    guard_run_dir(run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, in_chans=datamodule.in_chans,
                      num_classes=datamodule.num_classes, img_size=datamodule.img_size)
    method = instantiate(cfg.method) if "method" in cfg else FullPrecision()
    net = method.convert(net)
    size = account(net, "deployed", (datamodule.in_chans, datamodule.img_size,
                                     datamodule.img_size)).to_dict()
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = BNNModule(net, method, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)

    recorder = EpochRecorder()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="best",
                                              monitor="val/top1", mode="max", save_last=True)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=logger,
        callbacks=[recorder, checkpoint, pl.callbacks.RichProgressBar(leave=True)])

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
    wall = time.perf_counter() - start

    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    # the recipe's hash leaves out where and how the run is logged (paths differ run to run)
    recipe = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "logger"]),
                               resolve=True)
    record = RunRecord(
        method=choice("method", "fp"), model=choice("model", "?"), data=choice("data", "?"),
        seed=int(cfg.seed), test_top1=round(test["test/top1"], 4),
        test_top5=round(test["test/top5"], 4),
        best_val_top1=round(float(checkpoint.best_model_score or float("nan")), 4),
        num_params=count_parameters(net), epochs=trainer.current_epoch,
        wall_time_s=round(wall, 3), epoch_time_s=recorder.epoch_time_s, curves=recorder.curves,
        config_hash=config_hash(recipe), git_commit=git_commit(), device=describe_device(trainer),
        overrides=list(HydraConfig.get().overrides.task),
        extra={"size": {k: size[k] for k in SIZE_SUMMARY}},
    )
    if trainer.is_global_zero:
        (run_dir / "config_resolved.yaml").write_text(resolved)
        record.write(run_dir)
    return record


def describe_device(trainer: pl.Trainer) -> str:
    """e.g. 'cpu x2 (ddp)' or 'NVIDIA H100 80GB HBM3 x1'."""
    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else root.type
    strategy = type(trainer.strategy).__name__.replace("Strategy", "").lower()
    return f"{name} x{trainer.world_size} ({strategy})"
