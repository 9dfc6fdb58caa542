"""Shared helpers: backend resolution and the one-message input checks used by every launcher."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from bnnbench.errors import BnnbenchError

BACKENDS = ("auto", "triton", "cpu", "reference")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
WORD_BITS = 32


def num_words(n: int) -> int:
    """Number of int32 words that hold ``n`` packed signs: ceil(n / 32)."""
    return (n + WORD_BITS - 1) // WORD_BITS


def interpret_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (Triton then runs kernels on CPU tensors, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Map the user's ``backend`` argument to the implementation that runs.

    * ``"auto"``: CUDA tensors -> ``"triton"``; CPU tensors -> ``"cpu"`` (never the interpreter).
    * ``"triton"``: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` (tests only).
    * ``"cpu"``: the numpy/torch CPU implementation; CPU tensors only.
    * ``"reference"``: the unpacked float matmul in :mod:`bnnbench.kernels.reference`, any device.
    """
    if backend not in BACKENDS:
        raise BnnbenchError(f"{op}: backend={backend!r} is not one of {BACKENDS}")
    kind = device.type
    if backend == "auto":
        if kind == "cuda":
            return "triton"
        if kind == "cpu":
            return "cpu"
        return "reference"
    if backend == "triton":
        if kind == "cuda":
            return "triton"
        if kind == "cpu" and interpret_enabled():
            return "triton"
        raise BnnbenchError(
            f"{op}: backend='triton' needs CUDA tensors (got {kind}); for CPU tests set "
            "TRITON_INTERPRET=1 before bnnbench.kernels first launches a Triton kernel, "
            "or use backend='cpu'")
    if backend == "cpu" and kind != "cpu":
        raise BnnbenchError(f"{op}: backend='cpu' needs CPU tensors (got {kind}); "
                            "move them with .cpu() or use backend='auto'")
    return backend


def check(cond: bool, op: str, msg: str) -> None:
    """Raise :class:`BnnbenchError` ``"{op}: {msg}"`` unless ``cond``."""
    if not cond:
        raise BnnbenchError(f"{op}: {msg}")


def check_same_device(op: str, **tensors: Tensor | None) -> torch.device:
    """All given tensors on one device; returns it."""
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    uniq = set(devs.values())
    check(len(uniq) == 1, op, "tensors must be on one device, got "
          + ", ".join(f"{k} on {v}" for k, v in devs.items()))
    return next(iter(uniq))


def check_packed(t: Tensor, name: str, op: str, ndim: int | None = None) -> None:
    check(isinstance(t, Tensor), op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check(t.dtype == torch.int32, op,
          f"{name} must be int32 packed signs (from pack_signs), got dtype {t.dtype}")
    if ndim is not None:
        check(t.dim() == ndim, op, f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_words(t: Tensor, name: str, k: int, op: str, dim: int = -1) -> None:
    kw = num_words(k)
    check(t.shape[dim] == kw, op, f"{name} has {t.shape[dim]} words along dim {dim} but "
          f"k={k} needs ceil(k/32)={kw}")


def check_channel_vec(t: Tensor | None, name: str, n: int, op: str) -> None:
    if t is None:
        return
    check(isinstance(t, Tensor) and t.is_floating_point(), op,
          f"{name} must be a floating tensor of shape ({n},)")
    check(t.dim() == 1 and t.shape[0] == n, op,
          f"{name} must have shape ({n},), got {tuple(t.shape)}")


def pair(v: int | Sequence[int], name: str, op: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    vals = tuple(int(x) for x in v)
    check(len(vals) in (1, 2), op, f"{name} must be an int or a pair, got {v!r}")
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])
