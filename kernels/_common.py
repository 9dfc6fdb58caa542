"""Shared helpers: backend resolution and the one-message input checks used by every launcher."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import numpy as np
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
    if not (_plain_int(k) and 1 <= k <= MAX_INT * WORD_BITS):
        raise KernelInputError(f"{op}: k must be a positive int, got {k!r:.40}")


def check_channel_vec(t: Tensor | None, name: str, n: int, op: str) -> None:
    if t is None:
        return
    check(isinstance(t, Tensor) and t.is_floating_point(), op,
          f"{name} must be a floating tensor of shape ({n},)")
    check(t.dim() == 1 and t.shape[0] == n, op,
          f"{name} must have shape ({n},), got {tuple(t.shape)}")


#: the largest stride, padding, group count or word count an op takes (int32 indexing)
MAX_INT = 2**31 - 1


def _plain_int(v: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(v: int | Sequence[int], name: str, op: str) -> tuple[int, int]:
    """An int or a sequence of one or two ints (not floats, not bools) in 0..MAX_INT, as a
    pair; one :class:`KernelInputError` line otherwise."""
    vals = (v,) if _plain_int(v) else tuple(v) if isinstance(v, (tuple, list)) else ()
    if not (len(vals) in (1, 2) and all(_plain_int(x) and 0 <= x <= MAX_INT for x in vals)):
        raise KernelInputError(f"{op}: {name} must be an int or a pair of ints in "
                               f"0..{MAX_INT}, got {v!r:.60}")
    return (int(vals[0]), int(vals[0])) if len(vals) == 1 else (int(vals[0]), int(vals[1]))


def check_dim(t: Tensor, dim: object, name: str, op: str) -> int:
    """``dim`` is an int naming a dim of ``t`` (negative counts from the end); returns it."""
    if not (_plain_int(dim) and -t.dim() <= dim < t.dim()):
        raise KernelInputError(f"{op}: dim={dim!r:.40} is not a dim of {name}, which has shape "
                               f"{tuple(t.shape)}")
    return dim


def _checkable(t: Tensor) -> bool:
    """Whether a tensor's values can be read now: a plain CPU tensor outside tracing (on CUDA
    reading them would wait for the device; fake and meta tensors have none)."""
    return (type(t) is Tensor and t.device.type == "cpu" and not torch.compiler.is_compiling()
            and not t.requires_grad)


def check_pad_bits(t: Tensor, name: str, k: int, op: str, dim: int = -1) -> None:
    """The padding bits of packed signs (bits ``k % 32`` to 31 of the last word along ``dim``)
    are 0, as :func:`pack_signs` writes them: the XNOR dots count every bit of every word, so a
    set padding bit would change the result. Checked on CPU tensors (the compiled CPU kernels),
    where it costs one pass over the last words; on CUDA it would stall on the device."""
    rem = k % WORD_BITS
    if rem == 0 or t.numel() == 0 or not _checkable(t):
        return
    words = t.numpy()  # numpy: a few us, where the same torch ops cost ~20
    last = words[..., -1] if dim in (-1, words.ndim - 1) else np.take(words, -1, axis=dim)
    if int(np.bitwise_or.reduce(last, axis=None)) >> rem:  # any bit from rem up (sign too)
        raise KernelInputError(f"{op}: {name} has padding bits set past k={k} (bits {rem}..31 "
                               "of its last word must be 0, as pack_signs writes them)")


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
def validate_pack_signs(x: Tensor, dim: int, op: str) -> None:
    """x float16/bfloat16/float32 with at least one element along ``dim`` (a dim of x)."""
    check_float(x, "x", op)
    check(x.dim() >= 1, op, "x must have at least one dim")
    check_dim(x, dim, "x", op)
    check(x.shape[dim] >= 1, op,
          f"x needs at least one element along dim {dim}, got shape {tuple(x.shape)}")


def validate_xnor_gemm(a_packed: Tensor, w_packed: Tensor, k: int, op: str) -> torch.device:
    """a (..., KW) and w (N, KW) int32 packed along K, KW = ceil(k/32), one device."""
    check_packed(a_packed, "a_packed", op)
    check_packed(w_packed, "w_packed", op, 2)
    check_k(k, op)
    check(a_packed.dim() >= 1, op, "a_packed must have at least one dim")
    check_words(a_packed, "a_packed", k, op)
    check_words(w_packed, "w_packed", k, op)
    device = check_same_device(op, a_packed=a_packed, w_packed=w_packed)
    check_pad_bits(a_packed, "a_packed", k, op)
    check_pad_bits(w_packed, "w_packed", k, op)
    return device


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
    device = check_same_device(op, a_planes=a_planes, w_packed=w_packed, alpha=alpha,
                               scale=scale, bias=bias)
    check_pad_bits(a_planes, "a_planes", k, op)
    check_pad_bits(w_packed, "w_packed", k, op)
    return device


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
        check(_plain_int(in_channels) and 1 <= in_channels <= MAX_INT, op,
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
    check(_plain_int(groups) and 1 <= groups <= MAX_INT, op,
          f"groups must be a positive int, got {groups!r:.40}")
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
    # wider zero padding only adds outputs that see no input (and could ask for any memory)
    check(pd[0] <= kh and pd[1] <= kw, op, f"padding={pd} must be at most the kernel size "
          f"({kh}, {kw})")
    check(dl == (1, 1), op, f"dilation={dl} is not supported (only 1)")
    oh, ow = conv_out_hw(h, w, kh, kw, st, pd)
    check(oh >= 1 and ow >= 1, op, f"kernel ({kh}, {kw}) is larger than the padded input "
          f"({h + 2 * pd[0]}, {w + 2 * pd[1]})")
    check_channel_vec(scale, "scale", oc, op)
    check_channel_vec(bias, "bias", oc, op)
    device = check_same_device(op, x=x, w_packed=w_packed, scale=scale, bias=bias)
    check_pad_bits(w_packed, "w_packed", cg, op)
    if x.dtype == torch.int32:
        check_pad_bits(x, "packed x", c, op)
    return st, pd, device
