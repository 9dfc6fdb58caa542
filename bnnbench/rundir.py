"""A run directory belongs to one run: claimed atomically before anything is written into it.

* :func:`claim_run_dir` refuses a directory that holds a finished run (``metrics.json``) or any
  run's marker (``run.json``: a run is training there, or one was killed there), then creates the
  marker with ``O_CREAT | O_EXCL``: of two runs started together into one directory, exactly one
  gets it. The claim also holds an advisory lock on the marker for the run's lifetime, so a
  marker whose lock is free belongs to a run that died.
* :class:`GuardRunDir` is a Hydra callback (``hydra.callbacks`` in conf/config.yaml) that claims
  the job's directory in ``on_job_start`` and only then writes ``.hydra/`` (Hydra's own copy is
  switched off with ``hydra.output_subdir: null``): a refused relaunch rewrites nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError
from bnnbench.files import write_atomic
from bnnbench.report.record import METRICS_FILE

RUN_MARKER = "run.json"
CONFIG_FILE = "config_resolved.yaml"
CHECKPOINT_DIR = "checkpoints"
HYDRA_DIR = ".hydra"

# run directory -> the open marker file descriptor holding its lock (this process's claims)
_CLAIMS: dict[Path, int] = {}


def is_ddp_worker() -> bool:
    """DDP ranks > 0 are launched by rank 0 into its (already claimed) run directory."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0


def marker_is_locked(marker: Path) -> bool:
    """Whether a live process holds the run marker's lock (its run is training right now)."""
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def claim_run_dir(run_dir: Path) -> None:
    """Make ``run_dir`` this process's run directory, or raise BnnbenchError (nothing written)."""
    run_dir = Path(run_dir).resolve()
    if is_ddp_worker() or run_dir in _CLAIMS:
        return
    marker = run_dir / RUN_MARKER
    if (run_dir / METRICS_FILE).exists():
        raise BnnbenchError(f"{run_dir} already holds a run that finished ({METRICS_FILE}); "
                            "choose a new hydra.run.dir instead of overwriting it")
    if marker.exists():
        raise _taken(run_dir, marker)
    if (run_dir / CHECKPOINT_DIR).exists():  # a run from before markers existed
        raise BnnbenchError(f"{run_dir} already holds a run ({CHECKPOINT_DIR}); choose a new "
                            "hydra.run.dir instead of overwriting it")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another run claimed it between the checks and here
        raise _taken(run_dir, marker) from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
             "argv": sys.argv}
    os.write(fd, (json.dumps(owner) + "\n").encode())
    os.fsync(fd)
    _CLAIMS[run_dir] = fd


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on ``run_dir`` (the marker stays: the directory is a run's)."""
    fd = _CLAIMS.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing releases the flock


def _taken(run_dir: Path, marker: Path) -> BnnbenchError:
    if marker_is_locked(marker):
        return BnnbenchError(f"another run is training in {run_dir} right now ({RUN_MARKER} is "
                             "locked); choose a new hydra.run.dir")
    return BnnbenchError(f"{run_dir} holds an unfinished run (killed or crashed: {RUN_MARKER} "
                         f"but no {METRICS_FILE}); choose a new hydra.run.dir, its checkpoints "
                         "stay as they are")


def write_hydra_files(config: Any, run_dir: Path) -> None:
    """What Hydra writes to ``.hydra/`` (config, hydra, overrides), atomically, after the claim."""
    from omegaconf import OmegaConf, open_dict, read_write

    task = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    with read_write(task), open_dict(task):
        del task["hydra"]
    out = Path(run_dir) / HYDRA_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(task))
    write_atomic(out / "hydra.yaml", OmegaConf.to_yaml({"hydra": config.hydra}))
    write_atomic(out / "overrides.yaml", OmegaConf.to_yaml(config.hydra.overrides.task))


try:  # hydra is a dependency; the guard is a plain class when it is absent (e.g. docs builds)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class GuardRunDir(_HydraCallback):  # type: ignore[misc,valid-type]
    """Claim each job's directory before anything is written there; a refusal is one line."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if is_ddp_worker():
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        try:
            claim_run_dir(run_dir)
        except BnnbenchError as err:
            print(f"bnnbench: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        write_hydra_files(config, run_dir)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        release_run_dir(Path(config.hydra.runtime.output_dir))
