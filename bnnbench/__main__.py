"""``python -m bnnbench [+method=<name>] [model=...] [data=...] [key=value ...]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from bnnbench import CONFIG_DIR
from bnnbench.errors import call_or_exit
from bnnbench.multirun import is_multirun, run_point
from bnnbench.train import run


def flat_dirname(override_dirname: str) -> str:
    """One directory name for a sweep point: ``/`` in an override's value (``init=runs/x``,
    ``data.root=/scratch``) would otherwise nest the point's directory several levels deep."""
    return override_dirname.replace("/", "_")


# hydra.sweep.subdir (conf/config.yaml) calls it; registered wherever a sweep point runs (the
# submitit launcher's job process imports this module to unpickle main).
OmegaConf.register_new_resolver("flat_dirname", flat_dirname, replace=True)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train and test one run; returns test top-1 (what a Hydra sweeper optimizes). A multirun
    point that fails is recorded and the sweep goes on (:mod:`bnnbench.multirun`)."""
    if is_multirun():
        return run_point(cfg, run)
    return call_or_exit(run, cfg).test_top1


if __name__ == "__main__":
    main()
