"""RunRecord: what one run leaves in ``<run_dir>/metrics.json``, and the callback that fills it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from bnnbench.files import write_atomic

METRICS_FILE = "metrics.json"


@dataclasses.dataclass
class RunRecord:
    """One run's outcome. Accuracies are percentages; times are seconds.

    ``status`` is "finished", "diverged" or "failed" (``error``: the one line saying why); a
    diverged or failed run has no test numbers (``None``).
    """

    method: str
    model: str
    data: str
    seed: int
    test_top1: float | None
    test_top5: float | None
    best_val_top1: float
    num_params: int
    epochs: int
    wall_time_s: float
    epoch_time_s: list[float]
    curves: dict[str, list[float]]
    config_hash: str
    git_commit: str
    device: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "finished"
    error: str | None = None

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / METRICS_FILE
        return write_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> "RunRecord":
        data = json.loads((Path(run_dir) / METRICS_FILE).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def config_hash(resolved_yaml: str) -> str:
    """Short sha256 of the resolved config: runs with the same hash trained the same recipe."""
    return hashlib.sha256(resolved_yaml.encode()).hexdigest()[:16]


def git_commit(path: Path | None = None) -> str:
    """The commit of the bnnbench checkout, or 'unknown'.

    ``+dirty`` marks uncommitted changes to tracked files outside ``reports/`` (a report being
    regenerated is not a change to the code that produced it).
    """
    cwd = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":/", ":(top,exclude)reports"], cwd=cwd, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class EpochRecorder(pl.Callback):
    """Collects per-epoch curves (train loss, val metrics, learning rate) and epoch wall times."""

    KEYS = ("train/loss", "val/loss", "val/top1", "val/top5")

    def __init__(self) -> None:
        self.curves: dict[str, list[float]] = {k: [] for k in (*self.KEYS, "lr")}
        self.epoch_time_s: list[float] = []
        self._start = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Saved in each checkpoint: a resumed run's record holds every epoch's curves."""
        return {"curves": self.curves, "epoch_time_s": self.epoch_time_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curves = {k: list(v) for k, v in state["curves"].items()}
        self.epoch_time_s = list(state["epoch_time_s"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epoch_time_s.append(round(time.perf_counter() - self._start, 4))
        metrics = trainer.callback_metrics
        for key in self.KEYS:
            value = metrics.get(key)
            self.curves[key].append(float(value) if value is not None else float("nan"))
        self.curves["lr"].append(float(trainer.optimizers[0].param_groups[0]["lr"]))
