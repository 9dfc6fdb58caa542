"""One run, straight through: data, model, method, module, trainer, record.

Only this module and the Hydra entry points read the config object; everything they call takes
plain arguments.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bnnbench.errors import check_range
from bnnbench.files import write_atomic
from bnnbench.lit import BNNModule, count_parameters
from bnnbench.report.record import EpochRecorder, RunRecord, config_hash, git_commit
from bnnbench.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    claim_run_dir,
    is_ddp_worker,
    release_run_dir,
)
from bnnbench.size import account
from bnnbench.spec import (
    CHECKPOINT_SPEC_KEY,
    Spec,
    build_data,
    build_method,
    build_model,
    geometry_of,
    spec_from_config,
)

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


class StoreSpecInCheckpoint(pl.Callback):
    """Every checkpoint carries the run spec it was trained with (plain data, loadable with
    ``weights_only=True``): evaluate/export rebuild the network from this copy, so a run
    directory whose config changed later cannot be evaluated as another model."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_SPEC_KEY] = self.spec


def run(cfg: DictConfig) -> RunRecord:
    """Train, validate and test one configuration; write metrics.json beside the Hydra outputs."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    claim_run_dir(run_dir)  # a no-op when GuardRunDir already claimed it for this process
    try:
        return train_claimed(cfg, run_dir)
    finally:
        release_run_dir(run_dir)


def train_claimed(cfg: DictConfig, run_dir: Path) -> RunRecord:
    """:func:`run` once ``run_dir`` is this process's."""
    spec = spec_from_config(cfg)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if not is_ddp_worker():  # before fit: a killed run's directory says what it was training
        write_atomic(run_dir / CONFIG_FILE, resolved)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_data(spec)
    geometry = geometry_of(datamodule, spec["data"]["name"])
    net = build_model(spec, geometry)
    method = build_method(spec)
    net = method.convert(net)
    size = account(net, "deployed", (geometry["in_chans"], geometry["img_size"],
                                     geometry["img_size"])).to_dict()
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = BNNModule(net, method, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)

    recorder = EpochRecorder()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="best",
                                              monitor="val/top1", mode="max", save_last=True)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=logger,
        callbacks=[recorder, checkpoint, StoreSpecInCheckpoint(spec),
                   pl.callbacks.RichProgressBar(leave=True)])

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
    wall = time.perf_counter() - start

    # the recipe's hash leaves out where and how the run is logged (paths differ run to run)
    recipe = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "logger"]),
                               resolve=True)
    record = RunRecord(
        method=spec["method"]["name"], model=choice("model", "?"), data=spec["data"]["name"],
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
        record.write(run_dir)
    return record


def describe_device(trainer: pl.Trainer) -> str:
    """e.g. 'cpu x2 (ddp)' or 'NVIDIA H100 80GB HBM3 x1'."""
    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else root.type
    strategy = type(trainer.strategy).__name__.replace("Strategy", "").lower()
    return f"{name} x{trainer.world_size} ({strategy})"
