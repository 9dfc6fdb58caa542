"""``python -m bnnbench [+method=<name>] [model=...] [data=...] [key=value ...]``."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from bnnbench.train import run_or_exit

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train and test one run; returns test top-1 (what a Hydra sweeper optimizes)."""
    return run_or_exit(cfg).test_top1


if __name__ == "__main__":
    main()
