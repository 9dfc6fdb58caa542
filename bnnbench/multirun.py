"""A sweep (``python -m bnnbench -m ...``) survives its points, and reruns finish it.

Each point of a Hydra multirun goes through :func:`run_point`:

* **Rerun into the same ``hydra.sweep.dir``:** a point whose directory holds a finished run of the
  same recipe (equal :func:`~bnnbench.rundir.recipe_hash`) is skipped, its recorded result kept;
  a killed or failed point of the same config resumes from its last checkpoint
  (:func:`~bnnbench.rundir.claim_run_dir`); a directory holding another recipe's run fails that
  point and is left as it is.
* **A crash stays in its point:** any exception is caught, the point's ``metrics.json`` records
  ``"status": "failed"`` and the one-line ``"error"``, and the sweep goes on. SIGTERM
  (preemption) still stops the whole sweep with exit status 143: the machine is going away.
  :class:`SweepOutcome` (``hydra.callbacks``) lists the points that failed or did not finish when
  the sweep ends and exits 1 when there are any.
* **DDP points run in a process of their own.** Lightning starts the ranks > 0 of a DDP run by
  rerunning the parent's command line: in a multirun that is the whole sweep (``-m`` and every
  sweep value, Lightning issue 15737), which leaves a phantom sweep directory and ranks training
  other points. A point whose trainer would start its own ranks (``strategy=ddp``, not started by
  a cluster: SLURM/submitit, torchrun) is run as a single run of the point's own overrides into
  the point's directory (:func:`point_command`); its ranks are started from that command, and its
  process group ends with it. Under a cluster launcher (``hydra/launcher=submitit_slurm`` with
  ``tasks_per_node`` = devices) every rank is already a task of the point's job.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnnbench.errors import BnnbenchError, Preempted
from bnnbench.files import read_json
from bnnbench.record import METRICS_FILE, RunRecord, git_commit
from bnnbench.rundir import (
    ENDED,
    FAILED,
    REFUSED,
    RUN_MARKER,
    is_ddp_worker,
    marker_is_locked,
    recipe_hash,
    recorded_status,
    release_run_dir,
)

log = logging.getLogger(__name__)

# points of this process's sweep that failed without a metrics.json of theirs saying so:
# run directory -> why
UNRECORDED_FAILURES: dict[Path, str] = {}

# Hydra overrides that belong to the sweep, not to a single run of one point
SWEEP_ONLY_OVERRIDES = ("hydra.mode", "hydra.sweep", "hydra.launcher", "hydra/launcher",
                        "hydra.sweeper", "hydra/sweeper", "hydra.run.dir", "hydra.job.num",
                        "hydra.job.id", "hydra.output_subdir")
# strategies whose ranks Lightning starts by rerunning the command line (its popen launcher)
OWN_PROCESS_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true",
                          "ddp_find_unused_parameters_false")


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_point(cfg: DictConfig, train: Callable[[DictConfig], RunRecord]) -> float | None:
    """One sweep point: skip it when finished, else ``train(cfg)`` (in a process of its own for
    DDP), recording a crash instead of raising it. Returns the test top-1 (None: no result)."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    refusal = REFUSED.pop(run_dir.resolve(), None)
    if refusal is not None:
        done = finished_record(run_dir)
        if done is not None and done.get("config_hash") == recipe_hash(cfg):
            print(f"bnnbench: {run_dir} finished before (recipe {done['config_hash']}): skipped")
            return done.get("test_top1")
        return _fail(run_dir, refusal, recorded=False)
    try:
        if launches_own_ranks(cfg):
            record = run_in_own_process(cfg, run_dir)
        else:
            record = train(cfg)
    except Exception as err:  # noqa: BLE001 -- one point's crash must not end the sweep
        preempted = _in_chain(err, Preempted)
        if preempted is not None:
            print(f"bnnbench: error: {preempted}", file=sys.stderr)
            raise SystemExit(preempted.exit_code) from None
        known = _in_chain(err, BnnbenchError)
        if known is None:  # a crash, not bad input: its traceback goes to the point's log
            log.exception("sweep point %s crashed", run_dir)
        message = str(known) if known is not None else f"{type(err).__name__}: {err}"
        return _fail(run_dir, message, recorded=write_failed(cfg, run_dir, message))
    return record.test_top1


def _in_chain(err: BaseException, kind: type[BnnbenchError]) -> BnnbenchError | None:
    """The first ``kind`` in ``err``'s cause chain (hydra's instantiate wraps what it raises)."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, kind):
        cause = cause.__cause__
    return cause


def _fail(run_dir: Path, message: str, recorded: bool) -> None:
    message = " ".join(message.split())  # one line, whatever the exception said
    print(f"bnnbench: error: sweep point {run_dir.name} failed: {message}", file=sys.stderr)
    if not recorded:
        UNRECORDED_FAILURES[run_dir.resolve()] = message
    return None


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir``'s metrics.json when it records a run that ended (not a failed one)."""
    if recorded_status(run_dir) not in ENDED:
        return None
    return read_json(run_dir / METRICS_FILE)


def write_failed(cfg: DictConfig, run_dir: Path, error: str) -> bool:
    """Record the failed point in its metrics.json (rank 0 only, and only in a directory this
    sweep owns: never over another run's record). Returns whether it was written."""
    if is_ddp_worker() or not (run_dir / RUN_MARKER).exists():
        return False
    if recorded_status(run_dir) not in (None, FAILED):
        return False
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    try:
        from bnnbench.spec import spec_from_config

        spec = spec_from_config(cfg)
        names = (spec["method"]["name"], spec["data"]["name"])
    except BnnbenchError:
        names = (choices.get("method") or "fp", choices.get("data") or "?")
    record = RunRecord(
        method=names[0], model=choices.get("model") or "?", data=names[1],
        seed=int(cfg.get("seed", 0)), test_top1=None, test_top5=None,  # type: ignore[arg-type]
        best_val_top1=None, num_params=0, epochs=0, wall_time_s=0.0,  # type: ignore[arg-type]
        epoch_time_s=[], curves={}, config_hash=recipe_hash(cfg), git_commit=git_commit(),
        device="", overrides=list(HydraConfig.get().overrides.task), status=FAILED,
        error=" ".join(error.split()))
    try:
        record.write(run_dir)
    except BnnbenchError as err:  # a full disk: the sweep goes on, this point listed at its end
        print(f"bnnbench: error: {err}", file=sys.stderr)
        return False
    return True


def launches_own_ranks(cfg: DictConfig) -> bool:
    """Whether Lightning would start this point's ranks by rerunning the command line."""
    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy")
    if strategy not in OWN_PROCESS_STRATEGIES or trainer.get("devices") == 1:
        return False
    if "LOCAL_RANK" in os.environ:  # already one of a launched group's ranks
        return False
    from lightning_fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    # a cluster starts every rank itself (submitit/srun tasks, torchrun, jsrun, mpirun)
    return not any(env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment,
                                             LSFEnvironment, MPIEnvironment))


def point_command(run_dir: Path) -> list[str]:
    """``python -m bnnbench`` with this point's config sources, its own overrides and
    ``hydra.run.dir`` = the point's directory: a single run of exactly this point."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    flags = [f"--config-name={hydra.job.config_name}"]
    for source in hydra.runtime.config_sources:
        path = str(source.path)
        if source.schema == "file":
            path = path.removeprefix("file://")
        if source.provider == "main":
            flags.append(f"--config-path={path}")
        elif source.provider == "command-line":
            flags.append(f"--config-dir={path}")
    hydra_overrides = [o for o in hydra.overrides.hydra
                       if not o.lstrip("+~").startswith(SWEEP_ONLY_OVERRIDES)]
    quoted = str(Path(run_dir).resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return [sys.executable, "-m", "bnnbench", *flags, *hydra_overrides,
            *hydra.overrides.task, f"hydra.run.dir='{quoted}'"]


def run_in_own_process(cfg: DictConfig, run_dir: Path) -> RunRecord:
    """Run the point as a single run in a child process (see the module docstring); its stderr
    is passed through, and its one-line error becomes this point's error."""
    from hydra.utils import get_original_cwd

    command = point_command(run_dir)
    release_run_dir(run_dir)  # the child claims the directory (a takeover of this claim)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")}
    proc = subprocess.Popen(command, cwd=get_original_cwd(), env=env, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
    last_error = ""
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("bnnbench: error: "):
            last_error = line.removeprefix("bnnbench: error: ").strip()
    code = proc.wait()
    if code == 0 and recorded_status(run_dir) is not None:
        return RunRecord.read(run_dir)
    if code in (Preempted.exit_code, -15):
        raise Preempted(last_error or "the point's process was stopped by SIGTERM")
    if code < 0:
        raise BnnbenchError(last_error or f"the point's process was killed by signal {-code} "
                            "(a DDP rank that failed takes its group down; see the point's "
                            "logs)")
    raise BnnbenchError(last_error or f"the point's process exited with status {code} (see "
                        "the traceback above)")


def sweep_failures(sweep_dir: Path) -> dict[Path, str]:
    """Points under ``sweep_dir`` that did not finish: a failed record, or a marker with no
    metrics.json and nobody training there (killed); plus this process's unrecorded failures."""
    failures = dict(UNRECORDED_FAILURES)
    for marker in sorted(Path(sweep_dir).glob(f"*/{RUN_MARKER}")):
        point = marker.parent.resolve()
        status = recorded_status(point)
        if status == FAILED:
            failures[point] = " ".join(str(read_json(point / METRICS_FILE).get("error")
                                           or "").split())
        elif status is None and not marker_is_locked(marker):
            failures.setdefault(point, f"unfinished: no readable {METRICS_FILE} (killed?)")
    return failures


try:  # hydra is a dependency; the callback is a plain class when it is absent (docs builds)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class SweepOutcome(_HydraCallback):  # type: ignore[misc,valid-type]
    """At the end of a multirun: one line per point that failed or did not finish, the command to
    finish them, and exit status 1 when there are any."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failures = sweep_failures(sweep_dir)
        UNRECORDED_FAILURES.clear()
        if not failures:
            return
        for point, why in failures.items():
            print(f"bnnbench: error: {point.name}: {why}", file=sys.stderr)
        print(f"bnnbench: error: {len(failures)} sweep point(s) in {sweep_dir} did not finish; "
              f"rerun the same command with hydra.sweep.dir={sweep_dir} to retry them (finished "
              "points are skipped)", file=sys.stderr)
        raise SystemExit(1)
