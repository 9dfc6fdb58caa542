"""Shared helpers: backend resolution and the one-message input checks used by every launcher."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor


class KernelInputError(ValueError):
    """A bad argument to a kernel op; the message names the op, the argument and the fix, on one
    line. This library imports nothing from bnnbench: ``user_facing`` is how bnnbench's command
    line (:func:`bnnbench.errors.call_or_exit`) knows to print it as one line, like its own."""

    user_facing = True

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
        raise KernelInputError(f"{op}: backend={backend!r} is not one of {BACKENDS}")
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
        raise KernelInputError(
            f"{op}: backend='triton' needs CUDA tensors (got {kind}); for CPU tests set "
            "TRITON_INTERPRET=1 before bnnbench.kernels first launches a Triton kernel, "
            "or use backend='cpu'")
    if backend == "cpu" and kind != "cpu":
        raise KernelInputError(f"{op}: backend='cpu' needs CPU tensors (got {kind}); "
                            "move them with .cpu() or use backend='auto'")
    return backend


def check(cond: bool, op: str, msg: str) -> None:
    """Raise :class:`KernelInputError` ``"{op}: {msg}"`` unless ``cond``."""
    if not cond:
        raise KernelInputError(f"{op}: {msg}")


def check_same_device(op: str, **tensors: Tensor | None) -> torch.device:
    """All given tensors on one device; returns it."""
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    uniq = set(devs.values())
    if len(uniq) != 1:  # messages are formatted only for bad input (a cold call pays for each)
        raise KernelInputError(f"{op}: tensors must be on one device, got "
                               + ", ".join(f"{k} on {v}" for k, v in devs.items()))
    return next(iter(uniq))


def check_packed(t: Tensor, name: str, op: str, ndim: int | None = None) -> None:
    if not isinstance(t, Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise KernelInputError(
            f"{op}: {name} must be int32 packed signs (from pack_signs), got dtype {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise KernelInputError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_words(t: Tensor, name: str, k: int, op: str, dim: int = -1) -> None:
    kw = num_words(k)
    if t.shape[dim] != kw:
        raise KernelInputError(f"{op}: {name} has {t.shape[dim]} words along dim {dim} but "
                               f"k={k} needs ceil(k/32)={kw}")


def check_k(k: int, op: str) -> None:
    if not (isinstance(k, int) and k >= 1):
        raise KernelInputError(f"{op}: k must be a positive int, got {k!r}")


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


def check_float(t: Tensor, name: str, op: str) -> None:
    if not isinstance(t, Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise KernelInputError(f"{op}: {name} must be float16, bfloat16 or float32, "
                               f"got {t.dtype}")


def conv_out_hw(h: int, w: int, kh: int, kw: int, stride: Sequence[int],
                padding: Sequence[int]) -> tuple[int, int]:
    return ((h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1)


# ---------------------------------------------------------------------------------------------
# one validator per op, shared by the public functions and the Triton launchers
# ---------------------------------------------------------------------------------------------
def validate_xnor_gemm(a_packed: Tensor, w_packed: Tensor, k: int, op: str) -> torch.device:
    """a (..., KW) and w (N, KW) int32 packed along K, KW = ceil(k/32), one device."""
    check_packed(a_packed, "a_packed", op)
    check_packed(w_packed, "w_packed", op, 2)
    check_k(k, op)
    check(a_packed.dim() >= 1, op, "a_packed must have at least one dim")
    check_words(a_packed, "a_packed", k, op)
    check_words(w_packed, "w_packed", k, op)
    return check_same_device(op, a_packed=a_packed, w_packed=w_packed)


def validate_binary_weight_gemm(x: Tensor, w_packed: Tensor, scale: Tensor | None,
                                bias: Tensor | None, op: str) -> torch.device:
    """x (..., K) float, w (N, ceil(K/32)) int32, scale/bias (N,) float or None, one device."""
    check_float(x, "x", op)
    check(x.dim() >= 1 and x.shape[-1] >= 1, op, f"x must be (..., K), got {tuple(x.shape)}")
    check_packed(w_packed, "w_packed", op, 2)
    check_words(w_packed, "w_packed", x.shape[-1], op)
    n = w_packed.shape[0]
    check_channel_vec(scale, "scale", n, op)
    check_channel_vec(bias, "bias", n, op)
    return check_same_device(op, x=x, w_packed=w_packed, scale=scale, bias=bias)


def validate_multibit_xnor_gemm(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                                scale: Tensor | None, bias: Tensor | None,
                                op: str) -> torch.device:
    """planes (P, M, KW), w (N, KW), alpha (P,) or (P, M) float, scale/bias (N,) or None."""
    check_packed(a_planes, "a_planes", op, 3)
    check_packed(w_packed, "w_packed", op, 2)
    check_k(k, op)
    check_words(a_planes, "a_planes", k, op)
    check_words(w_packed, "w_packed", k, op)
    p, m = a_planes.shape[0], a_planes.shape[1]
    check(isinstance(alpha, Tensor) and alpha.is_floating_point(), op,
          "alpha must be a floating tensor of shape (P,) or (P, M)")
    check(tuple(alpha.shape) in ((p,), (p, m)), op,
          f"alpha must have shape ({p},) or ({p}, {m}), got {tuple(alpha.shape)}")
    n = w_packed.shape[0]
    check_channel_vec(scale, "scale", n, op)
    check_channel_vec(bias, "bias", n, op)
    return check_same_device(op, a_planes=a_planes, w_packed=w_packed, alpha=alpha, scale=scale,
                             bias=bias)


def validate_sign_threshold(threshold: Tensor, flip: Tensor, n: int, op: str) -> None:
    """The folded BatchNorm -> sign of ``n`` channels: int32 (n,) thresholds and flips (0/1)."""
    for name, t in (("threshold", threshold), ("flip", flip)):
        check(isinstance(t, Tensor) and t.dtype == torch.int32 and t.dim() == 1
              and t.shape[0] == n, op, f"{name} must be an int32 tensor of shape ({n},), got "
              f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}; "
              "fold it with bnnbench.packed.fusion.sign_thresholds")


def conv_input_dims(x: Tensor, in_channels: int | None, groups: int,
                    op: str) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a conv input: float NCHW, or packed signs (N, H, W, ceil(C/32)) int32
    (the output of ``binary_conv2d_signs``) whose channel count ``in_channels`` names."""
    check(isinstance(x, Tensor), op, f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.int32:
        check(x.dim() == 4, op, f"packed x must be (N, H, W, ceil(C/32)) int32, got "
              f"{tuple(x.shape)}")
        check(isinstance(in_channels, int) and in_channels >= 1, op,
              "packed int32 x needs in_channels=C (its words do not say how many channels)")
        check(x.shape[3] == num_words(in_channels), op, f"packed x has {x.shape[3]} words per "
              f"pixel but in_channels={in_channels} needs {num_words(in_channels)}")
        check(groups == 1, op, f"packed int32 x needs groups=1, got groups={groups}")
        return x.shape[0], in_channels, x.shape[1], x.shape[2]
    check_float(x, "x", op)
    check(x.dim() == 4, op, f"x must be (N, C, H, W), got {tuple(x.shape)}")
    check(in_channels is None or in_channels == x.shape[1], op,
          f"in_channels={in_channels} but x has {x.shape[1]} channels; drop in_channels")
    return tuple(x.shape)  # type: ignore[return-value]


def validate_binary_conv2d(x: Tensor, w_packed: Tensor, scale: Tensor | None,
                           bias: Tensor | None, stride, padding, dilation, groups: int,
                           op: str, in_channels: int | None = None
                           ) -> tuple[tuple[int, int], tuple[int, int], torch.device]:
    """x (N, C, H, W) float or packed (N, H, W, ceil(C/32)) int32 with ``in_channels``,
    w (OC, KH, KW, ceil(C/groups/32)) int32; returns the normalized ``(stride, padding,
    device)``; ``padding`` may be an int, a pair, 'valid' or 'same'."""
    check(isinstance(groups, int) and groups >= 1, op, f"groups must be >= 1, got {groups!r}")
    _, c, h, w = conv_input_dims(x, in_channels, groups, op)
    check_packed(w_packed, "w_packed", op, 4)
    oc, kh, kw, cw = w_packed.shape
    check(c % groups == 0 and oc % groups == 0, op,
          f"groups={groups} must divide in_channels={c} and out_channels={oc}")
    cg = c // groups
    check(cw == num_words(cg), op, f"w_packed has {cw} words per tap but C/groups={cg} needs "
          f"{num_words(cg)}: pack it with pack_conv_weight(w) for w of shape (OC, {cg}, KH, KW)")
    st, dl = pair(stride, "stride", op), pair(dilation, "dilation", op)
    if isinstance(padding, str):  # nn.Conv2d's string forms
        check(padding in ("valid", "same"), op,
              f"padding={padding!r} must be 'valid', 'same' or ints")
        if padding == "valid":
            pd = (0, 0)
        else:
            check(st == (1, 1) and kh % 2 == 1 and kw % 2 == 1, op,
                  "padding='same' needs stride 1 and odd kernel sizes (symmetric zero padding)")
            pd = ((kh - 1) // 2, (kw - 1) // 2)
    else:
        pd = pair(padding, "padding", op)
    check(min(st) >= 1, op, f"stride must be >= 1, got {st}")
    check(min(pd) >= 0, op, f"padding must be >= 0, got {pd}")
    check(dl == (1, 1), op, f"dilation={dl} is not supported (only 1)")
    oh, ow = conv_out_hw(h, w, kh, kw, st, pd)
    check(oh >= 1 and ow >= 1, op, f"kernel ({kh}, {kw}) is larger than the padded input "
          f"({h + 2 * pd[0]}, {w + 2 * pd[1]})")
    check_channel_vec(scale, "scale", oc, op)
    check_channel_vec(bias, "bias", oc, op)
    return st, pd, check_same_device(op, x=x, w_packed=w_packed, scale=scale, bias=bias)
