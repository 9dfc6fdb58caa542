"""The one exception type that the CLI turns into a one-line message (no traceback)."""


class BnnbenchError(ValueError):
    """A user-facing error: the message names the bad input and the fix, on one line."""


def check_range(key: str, value: float, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True) -> None:
    """Raise BnnbenchError naming ``key`` and the allowed range when ``value`` falls outside it."""
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else (f"{low} <= " if low_inclusive else f"{low} < ")
        hi = "" if high is None else f" <= {high}"
        raise BnnbenchError(f"{key}={value} is out of range: need {lo}{key}{hi}")
