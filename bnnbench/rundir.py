"""A run directory belongs to one run: claimed atomically before anything is written into it.

* :func:`claim_run_dir` refuses a directory that holds a finished run (``metrics.json``) or a
  live run (its marker ``run.json`` is locked), and takes over a killed run's directory (marker
  unlocked) only to resume that same config. A fresh claim creates the marker exclusively (locked,
  then linked into place: ``link`` fails on an existing name, like ``O_CREAT | O_EXCL``): of two
  runs started together into one directory exactly one gets it. The lock lives as long as the run's
  process, so a marker whose lock is free belongs to a run that died.
* :class:`GuardRunDir` is a Hydra callback (``callbacks`` in conf/hydra/default.yaml) that claims
  the job's directory in ``on_job_start`` and only then writes ``.hydra/`` (Hydra's own copy is
  switched off with ``hydra.output_subdir: null``): a refused relaunch rewrites nothing. In a
  multirun a refusal does not stop the sweep: it is kept for the point's task
  (:mod:`bnnbench.multirun`), which skips a finished point of the same recipe and records the
  others as failed.
* A directory whose ``metrics.json`` says ``"status": "failed"`` (a multirun point that crashed),
  or whose metrics.json is not a readable record with a known status (cut short, tampered with),
  counts as a killed run when its marker is there: the same config retries it there, resuming
  from its last checkpoint. Paths inside the run directory are compared relative to it (the
  marker records where the run was claimed), so a sweep copied or moved elsewhere resumes too.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError, first_line
from bnnbench.files import read_json, read_yaml, write_atomic
from bnnbench.record import METRICS_FILE, STATUSES

RUN_MARKER = "run.json"
CONFIG_FILE = "config_resolved.yaml"
CHECKPOINT_DIR = "checkpoints"
#: rewritten at the end of every epoch (conf/callbacks/default.yaml): resume, test, evaluate/export
LAST_CHECKPOINT = "last.ckpt"
# A two-stage recipe's directory: its stages (stage1/, stage2/) are the runs, it holds them
RECIPE_MARKER = "recipe.json"
HYDRA_DIR = ".hydra"

# Keys that may differ when the same command is rerun to resume (where to resume from).
RESUME_IGNORED = ("ckpt_path",)
# Keys the recipe hash leaves out: where and how a run is logged (paths differ run to run), where
# it resumed from, its tags, and its callbacks (early stopping's effect is the recorded epochs).
RECIPE_IGNORED = ("logger", "ckpt_path", "paths", "tags", "callbacks")
FAILED = "failed"
# a metrics.json with one of these statuses records a run that ended: never retried or replaced
ENDED = tuple(status for status in STATUSES if status != FAILED)
# where a run's own directory appears in its config (checkpoint and log paths): compared as
# this placeholder, so a sweep copied or moved elsewhere resumes as the same config
RUN_DIR_PLACEHOLDER = "<run dir>"


@dataclasses.dataclass
class Claim:
    fd: int  # the open marker, holding its lock while this process runs there
    resumed: bool  # the directory held a killed run of the same config


# run directory -> this process's claim on it
_CLAIMS: dict[Path, Claim] = {}


# refusals GuardRunDir kept for a multirun point's task: run directory -> the one-line reason
REFUSED: dict[Path, str] = {}

# Where a process learns its distributed rank: Lightning's launcher (LOCAL_RANK, NODE_RANK for
# the nodes after the first), torchrun (RANK), SLURM tasks (SLURM_PROCID: submitit and srun start
# every rank themselves).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def is_ddp_worker() -> bool:
    """A rank other than the global first: it runs in the run directory rank 0 claims, and never
    claims or writes bnnbench's files itself."""
    return any(_int_env(name) > 0 for name in RANK_VARIABLES)


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def recipe_hash(cfg: Any) -> str:
    """:func:`~bnnbench.record.config_hash` of a run's resolved task config, leaving out
    :data:`RECIPE_IGNORED`: two runs with the same hash trained the same recipe."""
    from omegaconf import OmegaConf

    from bnnbench.record import config_hash

    return config_hash(OmegaConf.to_yaml(OmegaConf.masked_copy(
        cfg, [k for k in cfg if k not in RECIPE_IGNORED and k != "hydra"]), resolve=True))


def recorded_status(run_dir: Path) -> str | None:
    """The ``status`` of ``run_dir``'s metrics.json (``finished`` when it has none), None when
    there is no metrics.json, or none that is readable and says one of :data:`STATUSES`
    (half-written, nested too deeply, ``"status": "bogus"``): nothing counts as ended then."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except BnnbenchError:
        return None
    status = record.get("status", "finished") if isinstance(record, dict) else None
    return status if status in STATUSES else None


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


def claim_run_dir(run_dir: Path, config: dict[str, Any] | None = None) -> bool:
    """Make ``run_dir`` this process's run directory, or raise BnnbenchError (nothing written).

    ``config``: the run's resolved config (plain). A directory holding a killed run (marker
    unlocked, no metrics.json) is taken over when its ``config_resolved.yaml`` equals ``config``
    (up to :data:`RESUME_IGNORED`): returns True, the run resumes there. A fresh directory:
    False. DDP workers and a second call for the same directory return the first call's answer.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _CLAIMS:
        return _CLAIMS[run_dir].resumed
    if is_ddp_worker():  # started by rank 0 before it writes any checkpoint: resume as it does
        return (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
    marker = run_dir / RUN_MARKER
    # a run that ended, or a metrics.json this sweep did not write (no marker); a failed run's
    # or an unreadable one beside a marker (a killed or crashed run of ours) is resumed
    if recorded_status(run_dir) in ENDED or ((run_dir / METRICS_FILE).exists()
                                             and not marker.exists()):
        raise BnnbenchError(f"{run_dir} already holds a run that finished ({METRICS_FILE}); "
                            "choose a new hydra.run.dir instead of overwriting it")
    if marker.exists():
        return _take_over(run_dir, marker, config)
    if (run_dir / CHECKPOINT_DIR).exists():  # a run from before markers existed
        raise BnnbenchError(f"{run_dir} already holds a run ({CHECKPOINT_DIR}); choose a new "
                            "hydra.run.dir instead of overwriting it")
    run_dir.mkdir(parents=True, exist_ok=True)
    # Write and lock the marker under a private name, then link it into place: link() fails when
    # the name exists, so of two runs started together exactly one claims the directory, and the
    # marker is never visible unlocked while its run lives.
    fd, tmp = tempfile.mkstemp(prefix=f".{RUN_MARKER}.", dir=run_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_owner(fd, run_dir)
        os.link(tmp, marker)
    except FileExistsError:
        os.close(fd)
        raise BnnbenchError(f"another run is training in {run_dir} right now ({RUN_MARKER} is "
                            "taken); choose a new hydra.run.dir") from None
    finally:
        os.unlink(tmp)
    _CLAIMS[run_dir] = Claim(fd, resumed=False)
    return False


def _take_over(run_dir: Path, marker: Path, config: dict[str, Any] | None) -> bool:
    """Claim the directory of a killed run to resume it (see :func:`claim_run_dir`)."""
    fd = os.open(marker, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BnnbenchError(f"another run is training in {run_dir} right now ({RUN_MARKER} is "
                            "locked); choose a new hydra.run.dir") from None
    try:
        saved = run_dir / CONFIG_FILE
        if not saved.exists() and (run_dir / CHECKPOINT_DIR).exists():
            raise BnnbenchError(f"{run_dir} holds an unfinished run without its {CONFIG_FILE}; "
                                "choose a new hydra.run.dir, its checkpoints stay as they are")
        if saved.exists() and config is not None:
            # a marker from before markers named their directory: the run has not moved
            earlier = _relative(read_yaml(saved), _recorded_dirs(fd) or _dirs(run_dir))
            differ = _differences(_comparable(earlier),
                                  _comparable(_relative(config, _dirs(run_dir))))
            if differ:
                raise BnnbenchError(
                    f"{run_dir} holds an unfinished run of another config ({', '.join(differ[:3])}"
                    " differ); rerun its own command to resume it, or choose a new "
                    "hydra.run.dir")
        os.ftruncate(fd, 0)
        _write_owner(fd, run_dir)
    except BaseException:
        os.close(fd)
        raise
    _CLAIMS[run_dir] = Claim(fd, resumed=True)
    return True


def _write_owner(fd: int, run_dir: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
             "argv": sys.argv, "run_dirs": _dirs(run_dir)}
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(owner) + "\n").encode())
    os.fsync(fd)


def _dirs(run_dir: Path) -> list[str]:
    """The spellings of ``run_dir`` a config may hold: Hydra's absolute path (symlinks kept)
    and the resolved one."""
    return list(dict.fromkeys([os.path.abspath(run_dir), str(Path(run_dir).resolve())]))


def _recorded_dirs(fd: int) -> list[str]:
    """Where the marker's run was when it was claimed (``run_dirs``), from the open marker;
    [] for a marker that does not say."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 1 << 16).decode())
        dirs = owner.get("run_dirs", []) if isinstance(owner, dict) else []
    except (OSError, ValueError, RecursionError):
        return []
    # "/" would make every path "inside" the run directory
    return [d for d in dirs if isinstance(d, str) and d.rstrip("/")] \
        if isinstance(dirs, list) else []


def _relative(config: Any, run_dirs: list[str]) -> Any:
    """``config`` with every path inside one of ``run_dirs`` written from
    :data:`RUN_DIR_PLACEHOLDER`: the same run compares equal wherever its directory now is."""
    if isinstance(config, dict):
        return {k: _relative(v, run_dirs) for k, v in config.items()}
    if isinstance(config, list):
        return [_relative(v, run_dirs) for v in config]
    if isinstance(config, str):
        for root in sorted(run_dirs, key=len, reverse=True):
            if config == root or config.startswith(root.rstrip("/") + "/"):
                return RUN_DIR_PLACEHOLDER + config[len(root.rstrip("/")):]
    return config


def _comparable(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: v for k, v in config.items() if k not in RESUME_IGNORED}
    return config


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two plain configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "<root>"]


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on ``run_dir`` (the marker stays: the directory is a run's)."""
    claim = _CLAIMS.pop(Path(run_dir).resolve(), None)
    if claim is not None:
        os.close(claim.fd)  # closing releases the flock


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
        from omegaconf import OmegaConf

        run_dir = Path(config.hydra.runtime.output_dir)
        # the job's own config, resolved as the task sees it (hydra's sweep keys do not resolve
        # in a single run)
        task = OmegaConf.to_container(
            OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), resolve=True)
        try:
            resumed = claim_run_dir(run_dir, task)
        except BnnbenchError as err:
            if _is_multirun(config):  # the point's task skips it or records it: the sweep goes on
                REFUSED[run_dir.resolve()] = str(err)
                return
            print(f"bnnbench: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        if not resumed:  # a resumed run keeps the .hydra/ it started with
            write_hydra_files(config, run_dir)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.runtime.output_dir)
        REFUSED.pop(run_dir.resolve(), None)
        release_run_dir(run_dir)


class CreateOutputDir(_HydraCallback):  # type: ignore[misc,valid-type]
    """Create the run's (or the sweep's) directory before Hydra does, so a path that cannot be
    created (read-only, under a file, /proc/...) is one line naming the key to change; Hydra's
    own mkdir fails before any job code runs and prints its traceback instead. Hydra's ``now``
    resolver is cached per config, so the directory made here is the one Hydra then uses."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _make_or_exit(config, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _make_or_exit(config, "hydra.sweep.dir")


def _make_or_exit(config: Any, key: str) -> None:
    from omegaconf import OmegaConf

    try:
        path = Path(str(OmegaConf.select(config, key, throw_on_resolution_failure=True)))
    except Exception:  # interpolates something only a job resolves: Hydra's own check stands
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or first_line(err)
        print(f"bnnbench: error: cannot create {key}={path} ({reason}); give a writable "
              f"directory: {key}=<dir>", file=sys.stderr)
        raise SystemExit(2) from None


def _is_multirun(config: Any) -> bool:
    from hydra.types import RunMode

    return config.hydra.mode == RunMode.MULTIRUN
