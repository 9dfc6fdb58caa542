"""``python -m bnnbench [+method=<name>] [model=...] [data=...] [key=value ...]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bnnbench import CONFIG_DIR
from bnnbench.errors import call_or_exit
from bnnbench.multirun import is_multirun, run_point
from bnnbench.train import run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train and test one run; returns test top-1 (what a Hydra sweeper optimizes). A multirun
    point that fails is recorded and the sweep goes on (:mod:`bnnbench.multirun`)."""
    if is_multirun():
        return run_point(cfg, run)
    return call_or_exit(run, cfg).test_top1


if __name__ == "__main__":
    main()
