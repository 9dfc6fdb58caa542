"""Shared fixtures: compose the shipped YAML exactly as the CLI does, and run it in a tmp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Triton reads this at import: without a GPU, every kernel test runs in the interpreter.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# CLI tests start `python -m bnnbench...` in a tmp directory: import this checkout there too,
# not whichever copy the environment has installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """Compose conf/config.yaml with CLI-style overrides; hydra's runtime points at ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(overrides)`` -> composed config whose run dir is a fresh tmp directory."""
    counter = iter(range(10_000))

    def _make(overrides: list[str] | None = None) -> DictConfig:
        run_dir = tmp_path / f"run{next(counter)}"
        run_dir.mkdir()
        return compose_config(list(overrides or []), run_dir)

    yield _make
    GlobalHydra.instance().clear()


# A short fit: a few batches of each split, on CPU, no progress bar noise in test logs.
FAST = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "logger=csv",
]

# ResNet-18's short fit: 2 train batches of 8, 1 val and 1 test batch of 8 (seconds on a CPU)
RESNET18_FAST = ["model=resnet18", *(o for o in FAST if not o.startswith("+trainer.limit_")),
                 "data.batch_size=8", "+data.eval_batch_size=8", "+trainer.limit_train_batches=2",
                 "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
