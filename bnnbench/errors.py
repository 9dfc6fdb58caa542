"""The one exception type that the CLIs turn into a one-line message (no traceback)."""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any


class BnnbenchError(ValueError):
    """A user-facing error: the message names the bad input and the fix, on one line."""

    exit_code = 2
    # what call_or_exit prints as one line; the kernel library (which imports nothing from
    # bnnbench) marks its own input errors the same way (bnnbench.kernels.KernelInputError)
    user_facing = True


class Preempted(BnnbenchError):
    """A run stopped by SIGTERM (preemption) after saving a checkpoint: 128 + SIGTERM, as a
    process killed by the signal, so schedulers see a run that did not finish."""

    exit_code = 143


class Diverged(BnnbenchError):
    """A run stopped at a non-finite training loss; it wrote metrics.json with status
    ``diverged``. Its own status (3), so a sweep script can tell it from bad input (2)."""

    exit_code = 3


def check_number(key: str, value: Any, *, integer: bool = False) -> None:
    """Raise BnnbenchError unless ``value`` is a finite number (an int when ``integer``).

    A config value arrives as whatever Hydra parsed: ``abc`` is a string, ``[1]`` a list, ``inf``
    and ``nan`` floats, ``true`` a bool; each gets one line naming the key, not a traceback
    from deep inside training (or a run that trains on ``lr=inf`` and reports it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BnnbenchError(f"{key}={_show(value)} is not a number; need "
                            f"{'an integer' if integer else 'a finite number'}")
    # an int is finite however long (math.isfinite would overflow converting a 400-digit one)
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise BnnbenchError(f"{key}={value} is not a finite number")
    if integer and not isinstance(value, numbers.Integral):
        raise BnnbenchError(f"{key}={value} is not an integer")


def check_range(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, integer: bool = False) -> None:
    """Raise BnnbenchError naming ``key`` and the allowed range when ``value`` falls outside it,
    or is not a finite number (an int when ``integer``) at all (:func:`check_number`)."""
    check_number(key, value, integer=integer)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else (f"{low} <= " if low_inclusive else f"{low} < ")
        hi = "" if high is None else f" <= {high}"
        raise BnnbenchError(f"{key}={value} is out of range: need {lo}{key}{hi}")


# ------------------------------------------------------------------ knobs against annotations
def check_knobs(prefix: str, target: Callable[..., Any], knobs: Mapping[str, Any]) -> None:
    """Check each knob's value against the type annotation of ``target``'s parameter of that
    name (for a class: its ``__init__`` and its bases', which receive ``**kwargs``).

    ``int`` takes ints (not bools, not 1.5), ``float`` finite ints or floats, ``bool`` only
    true/false, ``str`` strings, ``tuple[int, ...]``/``Sequence[float]`` lists of those,
    ``Literal`` its values, ``X | None`` null too; a class (e.g. ``Tensor``) takes nothing a
    config can hold. Parameters without an annotation this understands are left to ``target``.
    One line naming ``<prefix>.<knob>`` and the expected type for the first bad value.
    """
    hints = _parameter_hints(target)
    for key, value in knobs.items():
        value = _plain(value)  # Hydra's instantiate passes ListConfig/DictConfig values
        annotation = hints.get(key)
        if annotation is not None and _accepts(value, annotation) is False:
            raise BnnbenchError(f"{prefix}.{key}={_show(value)} is not valid: need "
                                f"{_describe(annotation)}")


def _parameter_hints(target: Callable[..., Any]) -> dict[str, Any]:
    if dataclasses.is_dataclass(target):  # its fields are its parameters
        return typing.get_type_hints(target)
    functions = ([vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c)]
                 if isinstance(target, type) else [target])
    hints: dict[str, Any] = {}
    for function in reversed(functions):  # a subclass's annotation wins over its base's
        try:
            hints.update(typing.get_type_hints(function))
        except Exception:  # one annotation does not resolve (e.g. torch's 'Iterable[int]'
            hints.update(_each_hint(function))  # without the import): take the others
    hints.pop("return", None)
    return hints


def _each_hint(function: Callable[..., Any]) -> dict[str, Any]:
    """The annotations of ``function`` that resolve, one by one (the code's own annotations,
    evaluated as ``typing.get_type_hints`` would; a config's values are never evaluated)."""
    namespace = {**vars(typing), **vars(collections.abc), **getattr(function, "__globals__", {})}
    hints = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        try:
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) \
                else annotation
        except Exception:
            continue
    return hints


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


def _accepts(value: Any, annotation: Any) -> bool | None:
    """True/False when ``annotation`` says whether a config value fits; None when it cannot."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if isinstance(value, Mapping) and "_target_" in value:  # Hydra builds it (a CLI config's
        return None  # +trainer.strategy={_target_: ...}); what it builds is not known here
    if annotation is None or annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(value, a) for a in args]
        return True if True in verdicts else None if None in verdicts else False
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (isinstance(value, int) or math.isfinite(value)))
    if annotation is str:
        return isinstance(value, str)
    if origin in _SEQUENCES:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            verdicts = [_accepts(v, a) for v, a in zip(value, args)]
        else:
            verdicts = [_accepts(v, args[0]) for v in value] if args else []
        return False if False in verdicts else None if None in verdicts else True
    if isinstance(annotation, type):  # e.g. Tensor, Accelerator: never a plain config value
        return isinstance(value, annotation)
    return None


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if not isinstance(a, type) or a in _PLAIN]
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if annotation in _PLAIN:
        return _PLAIN[annotation]
    if origin in _SEQUENCES:
        inner = _describe(args[0]) if args else "values"
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {inner.removeprefix('an ').removeprefix('a ')}s" \
            if inner in _PLAIN.values() else f"a list ({inner})"
    return getattr(annotation, "__name__", str(annotation))


_PLAIN = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
          type(None): "null"}


def _plain(value: Any) -> Any:
    """An OmegaConf ListConfig/DictConfig as the list/dict it holds; anything else as is."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover
        return value
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _show(value: Any) -> str:
    """A config value as the user typed it (a ListConfig prints as a list)."""
    value = _plain(value)
    return repr(value) if isinstance(value, str) else str(value)


def first_line(err: BaseException) -> str:
    """An exception's message reduced to its first non-empty line (for one-line errors)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def call_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a BnnbenchError (or another ``user_facing`` error, e.g. the
    kernels' KernelInputError) anywhere in the cause chain becomes one line on
    stderr and its exit status (2; 143 for a preempted run). The chain is searched because
    hydra's ``instantiate`` wraps the errors its targets raise. An OSError about a file (a path
    that cannot be created or written) is one line too, naming the path and the reason."""
    try:
        return fn(*args, **kwargs)
    except OSError as err:
        if err.filename is None:  # not about a path the user gave: a bug, keep the traceback
            raise
        # out=/dev/null/x, a read-only hydra.run.dir, a full disk: the path and the reason
        print(f"bnnbench: error: {err.filename}: {err.strerror or first_line(err)}; check the "
              "path given (out=, hydra.run.dir=, paths.root_dir=, ...)", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not getattr(cause, "user_facing", False):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"bnnbench: error: {cause}", file=sys.stderr)
        raise SystemExit(getattr(cause, "exit_code", 2)) from None
