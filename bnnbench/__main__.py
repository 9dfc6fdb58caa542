"""``python -m bnnbench [+method=<name>] [model=...] [data=...] [key=value ...]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bnnbench import CONFIG_DIR
from bnnbench.errors import call_or_exit
from bnnbench.train import run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train and test one run; returns test top-1 (what a Hydra sweeper optimizes)."""
    return call_or_exit(run, cfg).test_top1


if __name__ == "__main__":
    main()
