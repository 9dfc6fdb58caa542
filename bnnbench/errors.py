"""The one exception type that the CLIs turn into a one-line message (no traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class BnnbenchError(ValueError):
    """A user-facing error: the message names the bad input and the fix, on one line."""

    exit_code = 2


class Preempted(BnnbenchError):
    """A run stopped by SIGTERM (preemption) after saving a checkpoint: 128 + SIGTERM, as a
    process killed by the signal, so schedulers see a run that did not finish."""

    exit_code = 143


def check_range(key: str, value: float, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True) -> None:
    """Raise BnnbenchError naming ``key`` and the allowed range when ``value`` falls outside it."""
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else (f"{low} <= " if low_inclusive else f"{low} < ")
        hi = "" if high is None else f" <= {high}"
        raise BnnbenchError(f"{key}={value} is out of range: need {lo}{key}{hi}")


def call_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a BnnbenchError anywhere in the cause chain becomes one line on
    stderr and its exit status (2; 143 for a preempted run). The chain is searched because
    hydra's ``instantiate`` wraps the errors its targets raise."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, BnnbenchError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"bnnbench: error: {cause}", file=sys.stderr)
        raise SystemExit(cause.exit_code) from None
