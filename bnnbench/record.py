"""RunRecord: what one run leaves in ``<run_dir>/metrics.json``.

The report reads it, so this module imports nothing heavy (no torch, no Lightning: the report CLI
starts in a fraction of a second); the Lightning callback that collects a run's curves is
:class:`bnnbench.callbacks.EpochRecorder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any


from bnnbench.errors import BnnbenchError, check_knobs, check_range
from bnnbench.files import read_json, write_atomic

METRICS_FILE = "metrics.json"


STATUSES = ("finished", "diverged", "failed")

# Bounds on what a metrics.json may say (it is read back by the report and the sweeps, which
# aggregate it): accuracies are percentages; counts fit an int64 (pandas' integer columns);
# curves and times came from float32 tensors or wall clocks.
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
PERCENT_FIELDS = ("test_top1", "test_top5", "best_val_top1")
COUNT_FIELDS = ("seed", "num_params", "epochs")
SIZE_COUNTS = ("total_bytes", "fp32_bytes")


@dataclasses.dataclass
class RunRecord:
    """One run that ended. Accuracies are percentages; times are seconds.

    ``status``: ``finished`` (trained and tested), ``diverged`` (stopped at a non-finite training
    loss: no test accuracy) or ``failed``; ``error`` is then the one line that says why.
    A missing number (no test of a diverged run, no validation score, a NaN curve point) is
    ``None`` and ``null`` in metrics.json, which never holds NaN.
    """

    method: str
    model: str
    data: str
    seed: int
    test_top1: float | None
    test_top5: float | None
    best_val_top1: float | None
    num_params: int
    epochs: int
    wall_time_s: float
    epoch_time_s: list[float]
    curves: dict[str, list[float | None]]
    config_hash: str
    git_commit: str
    device: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "finished"
    error: str | None = None

    def write(self, run_dir: Path) -> Path:
        """``<run_dir>/metrics.json``, atomically; non-finite numbers become null."""
        path = Path(run_dir) / METRICS_FILE
        text = json.dumps(finite_or_null(dataclasses.asdict(self)), indent=2, allow_nan=False)
        return write_atomic(path, text + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> "RunRecord":
        """The record in ``<run_dir>/metrics.json``; a BnnbenchError naming the file and what is
        wrong with it (half-written, not JSON, a field missing or of the wrong type)."""
        path = Path(run_dir) / METRICS_FILE
        data = read_json(path)  # bounded: size, nesting (a BnnbenchError naming the file)
        if not isinstance(data, dict):
            raise BnnbenchError(f"{path} does not hold a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [name for name, f in fields.items() if name not in data
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise BnnbenchError(f"{path} lacks {', '.join(missing[:3])}")
        known = {k: v for k, v in data.items() if k in fields}
        check_knobs(str(path), cls, known)  # e.g. test_top1 "abc": refused here, not in a mean
        if known.get("status", "finished") not in STATUSES:
            raise BnnbenchError(f"{path}: status={known['status']!r} is not one of "
                                f"{', '.join(STATUSES)}")
        check_values(str(path), known)
        return cls(**known)


def check_values(prefix: str, known: dict[str, Any]) -> None:
    """The values of a metrics.json that fit their types (:func:`check_knobs`) within the
    bounds the report aggregates safely; BnnbenchError naming ``<prefix>.<field>`` otherwise."""
    for name in PERCENT_FIELDS:
        if known.get(name) is not None:
            check_range(f"{prefix}.{name}", known[name], low=0, high=100)
    for name in COUNT_FIELDS:
        if name in known:
            check_range(f"{prefix}.{name}", known[name], low=0, high=INT64_MAX, integer=True)
    if "wall_time_s" in known:
        check_range(f"{prefix}.wall_time_s", known["wall_time_s"], low=0, high=FLOAT32_MAX)
    for i, value in enumerate(known.get("epoch_time_s", [])):
        check_range(f"{prefix}.epoch_time_s[{i}]", value, low=0, high=FLOAT32_MAX)
    for key, curve in known.get("curves", {}).items():
        if not isinstance(curve, list):
            raise BnnbenchError(f"{prefix}.curves.{key} is not a list of numbers")
        for i, value in enumerate(curve):
            if value is not None:
                check_range(f"{prefix}.curves.{key}[{i}]", value, low=-FLOAT32_MAX,
                            high=FLOAT32_MAX)
    if not isinstance(known.get("extra", {}), dict):
        raise BnnbenchError(f"{prefix}.extra={known['extra']!r:.60} is not valid: need an "
                            "object")
    size = known.get("extra", {}).get("size")
    if size is None:
        return
    if not isinstance(size, dict):
        raise BnnbenchError(f"{prefix}.extra.size is not valid: need an object")
    for name in SIZE_COUNTS:
        if size.get(name) is not None:
            check_range(f"{prefix}.extra.size.{name}", size[name], low=0, high=INT64_MAX,
                        integer=True)
    if size.get("compression") is not None:
        check_range(f"{prefix}.extra.size.compression", size["compression"], low=0,
                    high=FLOAT32_MAX)


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN/inf float (in dicts and lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


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
