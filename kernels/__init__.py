"""Bitpacked kernels for binary neural networks (imported as ``bnnbench.kernels``).

Packing: 32 signs per int32 word, LSB first, bit 1 = -1 (``x < 0``), bit 0 = +1 (``x >= 0``),
zero padded. Every op dispatches on the tensors' device (``backend="auto"``): Triton on CUDA,
a numpy/torch implementation on CPU; ``backend="triton"`` on CPU runs the Triton interpreter
when ``TRITON_INTERPRET=1`` (tests only), ``backend="reference"`` the float64 references.

Public API::

    pack_signs(x, dim=-1) -> int32                     unpack_signs(packed, n, dim=-1) -> +-1
    xnor_gemm(a_packed, w_packed, k) -> int32          dot = k - 2 popcount(a ^ w)
    binary_weight_gemm(x, w_packed, scale, bias)       y = scale * (x @ sign(w).T) + bias
    multibit_xnor_gemm(a_planes, w_packed, alpha, k)   y = sum_i alpha_i xnor_dot(H_i, W)
    residual_binarize(x, num_planes)                   (planes, alpha) for the above
    pack_conv_weight(w)                                (OC, C/g, KH, KW) -> (OC, KH, KW, words)
    binary_conv2d(x, w_packed, scale, bias, stride, padding, dilation=1, groups=1)
                                                       x float NCHW, or packed NHWC int32
                                                       signs with in_channels=C
    xnor_gemm_signs(a_packed, w_packed, k, t, f)       fused BatchNorm -> sign epilogue: the
    binary_conv2d_signs(x, w_packed, t, f, ...)        next layer's packed input, bit =
                                                       (dot < t) XOR f

The ops are ``torch.library`` custom ops (``torch.ops.bnnbench.*``) with fake impls, so
``torch.compile`` works; pure-torch references are in :mod:`bnnbench.kernels.reference`.

Tools: ``python -m bnnbench.bench.kernels`` rewrites ``reports/kernels.md``;
``python -m bnnbench.kernels.aot_check`` compiles every Triton kernel for sm_80/sm_90 with
ptxas, no GPU needed (``TRITON_INTERPRET`` unset).
"""

from __future__ import annotations

from ._common import KernelInputError
from .ops import (
    binary_conv2d,
    binary_conv2d_signs,
    binary_weight_gemm,
    multibit_xnor_gemm,
    pack_conv_weight,
    pack_signs,
    residual_binarize,
    unpack_signs,
    xnor_gemm,
    xnor_gemm_signs,
)

__all__ = [
    "KernelInputError",
    "binary_conv2d",
    "binary_conv2d_signs",
    "binary_weight_gemm",
    "multibit_xnor_gemm",
    "pack_conv_weight",
    "pack_signs",
    "residual_binarize",
    "unpack_signs",
    "xnor_gemm",
    "xnor_gemm_signs",
]
