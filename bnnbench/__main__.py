"""``python -m bnnbench [+method=<name>] [model=...] [data=...] [key=value ...]``."""

from __future__ import annotations

import hashlib

import hydra
from omegaconf import DictConfig, OmegaConf

from bnnbench import CONFIG_DIR
from bnnbench.errors import call_or_exit
from bnnbench.multirun import is_multirun, run_point
from bnnbench.train import run


# a sweep point's directory name (after its job number) in bytes: file systems allow 255
MAX_DIRNAME_BYTES = 200


def flat_dirname(override_dirname: str) -> str:
    """One directory name for a sweep point: ``/`` in an override's value (``init=runs/x``,
    ``data.root=/scratch``) would otherwise nest the point's directory several levels deep.
    A name longer than :data:`MAX_DIRNAME_BYTES` (``tags=[<250 characters>]``) is cut there and
    ends with a hash of the whole: the same overrides always give the same directory (a rerun
    finds its points), different ones different directories."""
    name = override_dirname.replace("/", "_")
    encoded = name.encode()
    if len(encoded) <= MAX_DIRNAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    head = encoded[:MAX_DIRNAME_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


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
