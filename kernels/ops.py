"""Public packed-kernel API: checks, backend dispatch and ``torch.library`` custom ops.

Every public function validates its inputs once (one :class:`KernelInputError`
naming the bad argument), resolves ``backend`` and calls a ``bnnbench::*`` custom op. The ops
have fake (meta) implementations, so ``torch.compile`` traces through them without running a
kernel. ``backend`` (keyword-only everywhere):

* ``"auto"`` (default): CUDA tensors -> Triton kernels; CPU tensors -> the fast CPU
  implementation (:mod:`bnnbench.kernels.cpu`); never the Triton interpreter.
* ``"triton"``: Triton kernels; on CPU tensors only when ``TRITON_INTERPRET=1`` (tests).
* ``"cpu"``: numpy/torch CPU implementation (CPU tensors only).
* ``"reference"``: unpacked float64 math from :mod:`bnnbench.kernels.reference` (any device).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode

from . import reference as ref
from ._common import (
    FLOAT_DTYPES,
    KernelInputError,
    check,
    check_dim,
    check_float,
    check_same_device,
    check_packed,
    check_words,
    conv_out_hw,
    num_words,
    resolve_backend,
    validate_binary_conv2d,
    validate_binary_weight_gemm,
    validate_multibit_xnor_gemm,
    validate_pack_signs,
    validate_sign_threshold,
    validate_xnor_gemm,
)

# ---------------------------------------------------------------------------------------------
# backend table: every backend exposes the same canonical (last-dim, 2-D) functions
# ---------------------------------------------------------------------------------------------
_REFERENCE = SimpleNamespace(
    pack_signs=lambda x: ref.pack_signs_ref(x, -1),
    unpack_signs=lambda p, n, dtype: ref.unpack_signs_ref(p, n, -1, dtype),
    xnor_gemm=ref.xnor_gemm_ref,
    binary_weight_gemm=ref.binary_weight_gemm_ref,
    multibit_xnor_gemm=ref.multibit_xnor_gemm_ref,
    binary_conv2d=lambda x, w, scale, bias, stride, padding, groups, in_channels=None: (
        ref.binary_conv2d_ref(ref.conv_input_ref(x, in_channels), w, scale, bias, stride,
                              padding, groups).to(torch.float32 if x.dtype == torch.int32
                                                  else x.dtype)),
    xnor_gemm_signs=ref.xnor_gemm_signs_ref,
    binary_conv2d_signs=ref.binary_conv2d_signs_ref,
)


_MODULES: dict[str, object] = {"reference": _REFERENCE}


def _impl(backend: str):
    mod = _MODULES.get(backend)
    if mod is None:  # lazy: Triton reads TRITON_INTERPRET when the kernels are defined
        mod = _MODULES[backend] = importlib.import_module(
            ".cpu" if backend == "cpu" else ".triton_kernels", __package__)
    return mod


_NAMES: dict[object, str] = {}  # custom op -> its name, for _run


def _custom_op(name: str):
    """``torch.library.custom_op("bnnbench::<name>")``, its name kept for :func:`_run`."""
    def register(fn):
        op = torch.library.custom_op(f"bnnbench::{name}", mutates_args=())(fn)
        _NAMES[op] = name
        return op
    return register


def _run(op, backend: str, *args) -> Tensor:
    """``op(*args, backend)``, or, where :func:`_direct_cpu` allows it, the CPU body the op
    would run, called directly: the same code on the same tensors, without the dispatcher.

    The public functions here validate their arguments before calling this; the op bodies
    call the backends' public functions, which validate again (so ``torch.ops.bnnbench.*``
    called directly is as safe), and the direct path calls the CPU bodies that skip the
    second check (:data:`bnnbench.kernels.cpu.UNCHECKED`)."""
    if _direct_cpu(backend, *(a for a in args if isinstance(a, Tensor))):
        return getattr(_impl("cpu").UNCHECKED, _NAMES[op])(*args)
    return op(*args, backend)


def _direct_cpu(backend: str, *tensors: Tensor | None) -> bool:
    """True when an eager CPU call may run :mod:`bnnbench.kernels.cpu` directly instead of
    through its custom op: the same function on the same tensors, without the dispatcher's
    Python layers (~70 us warm and ~250 us cold per call on the 2-core bench machine, as much
    as the whole cold GEMV at N = K = 4096).

    The op stays in the path whenever something may need it: ``torch.compile`` tracing, a
    dispatch mode (FakeTensorMode, make_fx, FlopCounterMode...), tensor subclasses, or a
    tensor that requires grad (the custom op then refuses the backward pass as it always did).
    """
    if backend != "cpu" or torch.compiler.is_compiling() or _dispatch_mode() is not None:
        return False
    for t in tensors:
        if t is not None and (type(t) is not Tensor or t.requires_grad):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# custom ops (canonical shapes) + fake implementations
# ---------------------------------------------------------------------------------------------
@_custom_op("pack_signs")
def _pack_signs_op(x: Tensor, backend: str) -> Tensor:
    return _impl(backend).pack_signs(x).contiguous()


@_pack_signs_op.register_fake
def _(x: Tensor, backend: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], num_words(x.shape[-1])), dtype=torch.int32)


@_custom_op("unpack_signs")
def _unpack_signs_op(packed: Tensor, n: int, dtype: torch.dtype, backend: str) -> Tensor:
    return _impl(backend).unpack_signs(packed, n, dtype).contiguous()


@_unpack_signs_op.register_fake
def _(packed: Tensor, n: int, dtype: torch.dtype, backend: str) -> Tensor:
    return packed.new_empty((*packed.shape[:-1], n), dtype=dtype)


@_custom_op("xnor_gemm")
def _xnor_gemm_op(a_packed: Tensor, w_packed: Tensor, k: int, backend: str) -> Tensor:
    return _impl(backend).xnor_gemm(a_packed, w_packed, k).contiguous()


@_xnor_gemm_op.register_fake
def _(a_packed: Tensor, w_packed: Tensor, k: int, backend: str) -> Tensor:
    return a_packed.new_empty((a_packed.shape[0], w_packed.shape[0]), dtype=torch.int32)


@_custom_op("binary_weight_gemm")
def _binary_weight_gemm_op(x: Tensor, w_packed: Tensor, scale: Optional[Tensor],
                           bias: Optional[Tensor], backend: str) -> Tensor:
    return _impl(backend).binary_weight_gemm(x, w_packed, scale, bias).contiguous()


@_binary_weight_gemm_op.register_fake
def _(x: Tensor, w_packed: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
      backend: str) -> Tensor:
    return x.new_empty((x.shape[0], w_packed.shape[0]))


@_custom_op("multibit_xnor_gemm")
def _multibit_xnor_gemm_op(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                           scale: Optional[Tensor], bias: Optional[Tensor],
                           backend: str) -> Tensor:
    return _impl(backend).multibit_xnor_gemm(a_planes, w_packed, alpha, k, scale,
                                             bias).contiguous()


@_multibit_xnor_gemm_op.register_fake
def _(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int, scale: Optional[Tensor],
      bias: Optional[Tensor], backend: str) -> Tensor:
    return a_planes.new_empty((a_planes.shape[1], w_packed.shape[0]), dtype=torch.float32)


def _input_hw(x: Tensor) -> tuple[int, int]:
    """(H, W) of a conv input: NCHW floats or packed NHWC int32 signs."""
    return (x.shape[1], x.shape[2]) if x.dtype == torch.int32 else (x.shape[2], x.shape[3])


@_custom_op("binary_conv2d")
def _binary_conv2d_op(x: Tensor, w_packed: Tensor, scale: Optional[Tensor],
                      bias: Optional[Tensor], stride: list[int], padding: list[int],
                      groups: int, in_channels: int, backend: str) -> Tensor:
    return _impl(backend).binary_conv2d(x, w_packed, scale, bias, tuple(stride), tuple(padding),
                                        groups, in_channels or None).contiguous()


@_binary_conv2d_op.register_fake
def _(x: Tensor, w_packed: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
      stride: list[int], padding: list[int], groups: int, in_channels: int,
      backend: str) -> Tensor:
    oh, ow = conv_out_hw(*_input_hw(x), w_packed.shape[1], w_packed.shape[2], stride, padding)
    odt = x.dtype if x.is_floating_point() else torch.float32
    return x.new_empty((x.shape[0], w_packed.shape[0], oh, ow), dtype=odt)


@_custom_op("xnor_gemm_signs")
def _xnor_gemm_signs_op(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor,
                        flip: Tensor, backend: str) -> Tensor:
    return _impl(backend).xnor_gemm_signs(a_packed, w_packed, k, threshold, flip).contiguous()


@_xnor_gemm_signs_op.register_fake
def _(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor, flip: Tensor,
      backend: str) -> Tensor:
    return a_packed.new_empty((a_packed.shape[0], num_words(w_packed.shape[0])),
                              dtype=torch.int32)


@_custom_op("binary_conv2d_signs")
def _binary_conv2d_signs_op(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor,
                            stride: list[int], padding: list[int], groups: int,
                            in_channels: int, backend: str) -> Tensor:
    return _impl(backend).binary_conv2d_signs(x, w_packed, threshold, flip, tuple(stride),
                                              tuple(padding), groups,
                                              in_channels or None).contiguous()


@_binary_conv2d_signs_op.register_fake
def _(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor, stride: list[int],
      padding: list[int], groups: int, in_channels: int, backend: str) -> Tensor:
    oh, ow = conv_out_hw(*_input_hw(x), w_packed.shape[1], w_packed.shape[2], stride, padding)
    return x.new_empty((x.shape[0], oh, ow, num_words(w_packed.shape[0])), dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def pack_signs(x: Tensor, dim: int = -1, *, backend: str = "auto") -> Tensor:
    """Pack the signs of ``x`` along ``dim``: 32 per int32 word, LSB first.

    ``word[j] = sum_{b<32} [x[32 j + b] < 0] << b``: bit 1 = -1 (``x < 0``), bit 0 = +1
    (``x >= 0`` or NaN: sign(0) = sign(-0.0) = sign(NaN) = +1, bnnbench's one rule), zero
    padded to a multiple of 32. Output has
    ``ceil(x.shape[dim] / 32)`` words along ``dim``.
    """
    op = "pack_signs"
    validate_pack_signs(x, dim, op)
    be = resolve_backend(backend, x.device, op)
    last = dim in (-1, x.dim() - 1)  # packing along the last dim: no movedim to dispatch
    xt = x if last else x.movedim(dim, -1)
    out = _run(_pack_signs_op, be, xt)
    return out if last else out.movedim(-1, dim)


def unpack_signs(packed: Tensor, n: int, dim: int = -1, *, dtype: torch.dtype = torch.float32,
                 backend: str = "auto") -> Tensor:
    """Inverse of :func:`pack_signs`: ``n`` values in {-1, +1} (of ``dtype``) along ``dim``."""
    op = "unpack_signs"
    check_packed(packed, "packed", op)
    check(packed.dim() >= 1, op, "packed must have at least one dim")
    check_dim(packed, dim, "packed", op)
    check(isinstance(n, int) and n >= 1, op, f"n must be a positive int, got {n!r:.40}")
    check_words(packed, "packed", n, op, dim)
    check(dtype in FLOAT_DTYPES or dtype == torch.int8, op,
          f"dtype must be float16, bfloat16, float32 or int8, got {dtype}")
    be = resolve_backend(backend, packed.device, op)
    out = _run(_unpack_signs_op, be, packed.movedim(dim, -1), n, dtype)
    return out.movedim(-1, dim)


def xnor_gemm(a_packed: Tensor, w_packed: Tensor, k: int, *, backend: str = "auto") -> Tensor:
    """Exact dot products of +-1 matrices, packed along K: int32 ``(..., N)``.

    ``dot[m, n] = sum_k a[m, k] w[n, k] = k - 2 * popcount(a[m] XOR w[n])``; a is (..., KW),
    w is (N, KW), ``KW = ceil(k/32)`` and ``k`` the true K (zero pads cancel in the XOR).
    """
    op = "xnor_gemm"
    dev = validate_xnor_gemm(a_packed, w_packed, k, op)
    be = resolve_backend(backend, dev, op)
    flat = a_packed.dim() == 2  # (M, KW) already: no reshape to dispatch either way
    a2 = a_packed if flat else a_packed.reshape(-1, a_packed.shape[-1])
    out = _run(_xnor_gemm_op, be, a2, w_packed, k)
    return out if flat else out.reshape(*a_packed.shape[:-1], w_packed.shape[0])


def binary_weight_gemm(x: Tensor, w_packed: Tensor, scale: Tensor | None = None,
                       bias: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """Binary-weight linear layer: ``y[m, n] = scale[n] * sum_k x[m, k] w[n, k] + bias[n]``.

    x (..., K) fp16/bf16/fp32 activations; w_packed (N, ceil(K/32)) 1-bit weights from
    :func:`pack_signs`; scale, bias optional (N,) per-output-channel. Returns x.dtype (..., N).
    """
    op = "binary_weight_gemm"
    dev = validate_binary_weight_gemm(x, w_packed, scale, bias, op)
    k, n = x.shape[-1], w_packed.shape[0]
    be = resolve_backend(backend, dev, op)
    out = _run(_binary_weight_gemm_op, be, x.reshape(-1, k), w_packed, scale, bias)
    return out.reshape(*x.shape[:-1], n)


def multibit_xnor_gemm(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                       scale: Tensor | None = None, bias: Tensor | None = None, *,
                       backend: str = "auto") -> Tensor:
    """Multiple binarization (Tang et al. 2017), all planes in one kernel launch.

    Activations approximated as ``A ~ sum_i alpha_i H_i`` (H_i in {-1, +1}, packed):
    ``y[m, n] = scale[n] * sum_i alpha[i, m] * xnor_dot(H_i, W)[m, n] + bias[n]`` (float32).
    a_planes (P, M, ceil(k/32)); alpha (P,) per-plane scalars or (P, M) per-row; w (N, KW).
    """
    op = "multibit_xnor_gemm"
    dev = validate_multibit_xnor_gemm(a_planes, w_packed, alpha, k, scale, bias, op)
    p, m = a_planes.shape[0], a_planes.shape[1]
    be = resolve_backend(backend, dev, op)
    al = alpha.to(torch.float32)
    if al.dim() == 1:
        al = al[:, None].expand(p, m).contiguous()
    return _run(_multibit_xnor_gemm_op, be, a_planes, w_packed, al, k, scale, bias)


def pack_conv_weight(w: Tensor, *, backend: str = "auto") -> Tensor:
    """(OC, C/groups, KH, KW) float -> (OC, KH, KW, ceil(C/groups/32)) int32, packed along C."""
    check_float(w, "w", "pack_conv_weight")
    check(w.dim() == 4, "pack_conv_weight",
          f"w must be (OC, C/groups, KH, KW), got {tuple(w.shape)}")
    return pack_signs(w.permute(0, 2, 3, 1), dim=-1, backend=backend).contiguous()


def binary_conv2d(x: Tensor, w_packed: Tensor, scale: Tensor | None = None,
                  bias: Tensor | None = None, stride: int | Sequence[int] = 1,
                  padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1,
                  groups: int = 1, *, in_channels: int | None = None,
                  backend: str = "auto") -> Tensor:
    """Packed binary conv2d with exact ZERO padding: ``conv2d(sign(x), sign(w))*scale + bias``.

    x (N, C, H, W) float (signs taken inside, sign(0) = +1), or already packed signs
    (N, H, W, ceil(C/32)) int32 (:func:`binary_conv2d_signs`'s output, or
    ``pack_signs(x.permute(0, 2, 3, 1))``) with ``in_channels = C`` and groups 1, which skips
    the pack step; w_packed from :func:`pack_conv_weight`. Padded taps contribute 0 (the
    function a BNN trained with zero padding on +-1 inputs computes), not -1 or +1:
    ``dot = sum over valid taps only``. Returns (N, OC, OH, OW) in x.dtype (float32 for packed
    x). dilation must be 1.
    """
    op = "binary_conv2d"
    st, pd, dev = validate_binary_conv2d(x, w_packed, scale, bias, stride, padding, dilation,
                                         groups, op, in_channels)
    be = resolve_backend(backend, dev, op)
    return _run(_binary_conv2d_op, be, x, w_packed, scale, bias, list(st), list(pd), groups,
                in_channels or 0)


def xnor_gemm_signs(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor,
                    flip: Tensor, *, backend: str = "auto") -> Tensor:
    """A binary layer fused with the BatchNorm -> sign after it: the next layer's packed input.

    ``out[..., :]`` packs, for every output channel n, the bit
    ``(dot[..., n] < threshold[n]) XOR flip[n]`` (bit 1 = -1), dot the exact
    :func:`xnor_gemm`; (..., ceil(N/32)) int32, pad bits 0, ready for the next
    :func:`xnor_gemm` (no pack kernel, no float output). threshold and flip are int32 (N,)
    from :func:`bnnbench.packed.fusion.sign_thresholds`, which folds a BatchNorm -> sign:
    ``sign(gamma (y - mu) / sqrt(var + eps) + beta) = -1`` iff ``y < t`` (gamma > 0), iff
    ``y >= t`` (gamma < 0: flip 1), never or always (gamma = 0).
    """
    op = "xnor_gemm_signs"
    dev = validate_xnor_gemm(a_packed, w_packed, k, op)
    n = w_packed.shape[0]
    validate_sign_threshold(threshold, flip, n, op)
    check_same_device(op, a_packed=a_packed, threshold=threshold, flip=flip)
    be = resolve_backend(backend, dev, op)
    lead = a_packed.shape[:-1]
    out = _run(_xnor_gemm_signs_op, be, a_packed.reshape(-1, a_packed.shape[-1]), w_packed, k,
               threshold, flip)
    return out.reshape(*lead, num_words(n))


def binary_conv2d_signs(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor,
                        stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                        dilation: int | Sequence[int] = 1, groups: int = 1, *,
                        in_channels: int | None = None, backend: str = "auto") -> Tensor:
    """:func:`binary_conv2d` fused with the BatchNorm -> sign after it (groups 1): the next
    conv's packed input (N, OH, OW, ceil(OC/32)) int32, bit o = ``(dot < threshold[o]) XOR
    flip[o]`` for the exact zero-padded conv dot (see :func:`xnor_gemm_signs`). x as for
    :func:`binary_conv2d` (float NCHW, or packed with ``in_channels``)."""
    op = "binary_conv2d_signs"
    st, pd, dev = validate_binary_conv2d(x, w_packed, None, None, stride, padding, dilation,
                                         groups, op, in_channels)
    check(groups == 1, op, f"groups={groups}: the fused signs output needs groups=1")
    validate_sign_threshold(threshold, flip, w_packed.shape[0], op)
    check_same_device(op, x=x, threshold=threshold, flip=flip)
    be = resolve_backend(backend, dev, op)
    return _run(_binary_conv2d_signs_op, be, x, w_packed, threshold, flip, list(st), list(pd),
                groups, in_channels or 0)


def residual_binarize(x: Tensor, num_planes: int, per_row: bool = True, *,
                      backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Residual binarization (Tang et al. 2017): ``x ~ sum_i alpha_i H_i``.

    ``r_0 = x``; ``alpha_i = mean|r_i|`` (per row when ``per_row``); ``H_i = sign(r_i)``;
    ``r_{i+1} = r_i - alpha_i H_i``. x is (M, K); returns ``(planes, alpha)`` with planes
    (P, M, ceil(K/32)) int32 packed and alpha (P, M) (``per_row``) or (P,) float32, ready for
    :func:`multibit_xnor_gemm`.
    """
    op = "residual_binarize"
    check_float(x, "x", op)
    check(x.dim() == 2, op, f"x must be (M, K), got {tuple(x.shape)}")
    check(isinstance(num_planes, int) and num_planes >= 1, op,
          f"num_planes must be >= 1, got {num_planes!r}")
    r = x.to(torch.float32)
    hs, alphas = [], []
    for _ in range(num_planes):
        a = r.abs().mean(dim=-1) if per_row else r.abs().mean()
        h = torch.where(r < 0, -1.0, 1.0)
        hs.append(h)
        alphas.append(a)
        r = r - (a[:, None] if per_row else a) * h
    planes = pack_signs(torch.stack(hs), dim=-1, backend=backend)
    return planes, torch.stack(alphas)
