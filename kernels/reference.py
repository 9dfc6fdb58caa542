"""Pure-torch references for every packed kernel: unpack to +-1 and use float64 math.

These are the ground truth the Triton and CPU kernels are tested against. They run on any
device, are slow, and are written for clarity, not speed.

Bit convention (shared by every kernel): ``pack_signs`` stores 32 signs per int32 word,
least-significant bit first; bit 1 means -1 (``x < 0``), bit 0 means +1 (``x >= 0``, so
sign(0) = +1); the last word is zero padded, i.e. padding encodes +1 on both operands.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import WORD_BITS, num_words


def sign_pm1(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """+1 where ``x >= 0`` (NaN included), -1 where ``x < 0``."""
    one = torch.ones((), dtype=dtype or x.dtype, device=x.device)
    return torch.where(x < 0, -one, one)


def pack_signs_ref(x: Tensor, dim: int = -1) -> Tensor:
    """Pack signs of ``x`` along ``dim`` into int32 words: word[j] = sum_b [x[32j+b] < 0] << b."""
    xl = x.movedim(dim, -1)
    k = xl.shape[-1]
    kw = num_words(k)
    bits = (xl < 0).to(torch.int64)
    bits = F.pad(bits, (0, kw * WORD_BITS - k))
    bits = bits.reshape(*bits.shape[:-1], kw, WORD_BITS)
    shifts = torch.arange(WORD_BITS, device=x.device, dtype=torch.int64)
    words = (bits << shifts).sum(-1)  # in [0, 2^32)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.movedim(-1, dim)


def unpack_signs_ref(packed: Tensor, n: int, dim: int = -1,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_signs_ref`: ``n`` values in {-1, +1} along ``dim``."""
    pl = packed.movedim(dim, -1).to(torch.int64)
    shifts = torch.arange(WORD_BITS, device=packed.device, dtype=torch.int64)
    bits = (pl.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*pl.shape[:-1], pl.shape[-1] * WORD_BITS)[..., :n]
    return (1 - 2 * bits).to(dtype).movedim(-1, dim)


def xnor_gemm_ref(a_packed: Tensor, w_packed: Tensor, k: int) -> Tensor:
    """dot[m, n] = sum_k a[m, k] * w[n, k] for +-1 matrices, as int32 (float64 matmul)."""
    a = unpack_signs_ref(a_packed, k, dtype=torch.float64)
    w = unpack_signs_ref(w_packed, k, dtype=torch.float64)
    return (a @ w.T).round().to(torch.int32)


def binary_weight_gemm_ref(x: Tensor, w_packed: Tensor, scale: Tensor | None = None,
                           bias: Tensor | None = None) -> Tensor:
    """y[m, n] = scale[n] * sum_k x[m, k] * w_sign[n, k] + bias[n] (float64 math, x.dtype out)."""
    k = x.shape[-1]
    w = unpack_signs_ref(w_packed, k, dtype=torch.float64)
    y = x.to(torch.float64) @ w.T
    if scale is not None:
        y = y * scale.to(torch.float64)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(x.dtype)


def multibit_xnor_gemm_ref(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                           scale: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """y[m, n] = scale[n] * sum_i alpha[i, m] * xnor_dot(H_i, W)[m, n] + bias[n] (float32 out).

    ``a_planes`` is (P, M, ceil(k/32)) packed residual planes H_i; ``alpha`` is (P,) or (P, M).
    """
    p, m = a_planes.shape[0], a_planes.shape[1]
    al = alpha.to(torch.float64)
    al = al[:, None].expand(p, m) if al.dim() == 1 else al
    y = torch.zeros(m, w_packed.shape[0], dtype=torch.float64, device=a_planes.device)
    for i in range(p):
        y += al[i][:, None] * xnor_gemm_ref(a_planes[i], w_packed, k).to(torch.float64)
    if scale is not None:
        y = y * scale.to(torch.float64)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32)


def pack_conv_weight_ref(w: Tensor) -> Tensor:
    """(OC, C/groups, KH, KW) float -> (OC, KH, KW, ceil(C/groups / 32)) int32, packed along C."""
    return pack_signs_ref(w.permute(0, 2, 3, 1), dim=-1).contiguous()


def unpack_conv_weight_ref(w_packed: Tensor, c_per_group: int,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_conv_weight_ref`: (OC, C/groups, KH, KW) in {-1, +1}."""
    return unpack_signs_ref(w_packed, c_per_group, dim=-1, dtype=dtype).permute(0, 3, 1, 2)


def binary_conv2d_ref(x: Tensor, w_packed: Tensor, scale: Tensor | None = None,
                      bias: Tensor | None = None, stride: int | Sequence[int] = 1,
                      padding: int | Sequence[int] = 0, groups: int = 1) -> Tensor:
    """conv2d(sign(x), w_sign) with ZERO padding (pads are 0, not -1/+1), then scale and bias."""
    cg = x.shape[1] // groups
    w = unpack_conv_weight_ref(w_packed, cg, dtype=torch.float64)
    xs = sign_pm1(x, torch.float64)
    y = F.conv2d(xs, w, stride=stride, padding=padding, groups=groups)
    if scale is not None:
        y = y * scale.to(torch.float64)[None, :, None, None]
    if bias is not None:
        y = y + bias.to(torch.float64)[None, :, None, None]
    return y.to(x.dtype if x.is_floating_point() else torch.float32)


def threshold_signs_ref(dots: Tensor, threshold: Tensor, flip: Tensor) -> Tensor:
    """A folded BatchNorm -> sign on exact dots, packed: (..., N) -> (..., ceil(N/32)) int32,
    bit n = ``(dots[..., n] < threshold[n]) XOR flip[n]`` (bit 1 = -1)."""
    neg = (dots.to(torch.int64) < threshold.to(torch.int64)) ^ (flip.to(torch.int64) & 1).bool()
    return pack_signs_ref(torch.where(neg, -1.0, 1.0).to(torch.float64))


def conv_input_ref(x: Tensor, in_channels: int | None = None) -> Tensor:
    """A conv input as float: NCHW floats as they are, packed NHWC signs (N, H, W, ceil(C/32))
    int32 unpacked to +-1 float64 NCHW."""
    if x.dtype != torch.int32:
        return x
    return unpack_signs_ref(x, int(in_channels), -1, torch.float64).permute(0, 3, 1, 2)


def xnor_gemm_signs_ref(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor,
                        flip: Tensor) -> Tensor:
    return threshold_signs_ref(xnor_gemm_ref(a_packed, w_packed, k), threshold, flip)


def binary_conv2d_signs_ref(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor,
                            stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                            groups: int = 1, in_channels: int | None = None) -> Tensor:
    """(N, OH, OW, ceil(OC/32)) packed signs of the thresholded exact conv dots."""
    y = binary_conv2d_ref(conv_input_ref(x, in_channels).to(torch.float64), w_packed,
                          stride=stride, padding=padding, groups=groups)
    return threshold_signs_ref(y.round().to(torch.int64).permute(0, 2, 3, 1), threshold, flip)


def residual_binarize_ref(x: Tensor, num_planes: int,
                          per_row: bool = True) -> tuple[Tensor, Tensor]:
    """Tang et al. (2017) residual binarization: x ~ sum_i alpha_i H_i, H_i = sign(r_i).

    r_0 = x, alpha_i = mean|r_i| (per row of x when ``per_row``), r_{i+1} = r_i - alpha_i H_i.
    Returns ``(planes, alpha)``: planes (P, M, ceil(K/32)) int32 packed, alpha (P, M) or (P,).
    """
    r = x.to(torch.float32)
    planes, alphas = [], []
    for _ in range(num_planes):
        a = r.abs().mean(dim=-1) if per_row else r.abs().mean()
        h = sign_pm1(r)
        planes.append(pack_signs_ref(h))
        alphas.append(a)
        r = r - (a[:, None] if per_row else a) * h
    return torch.stack(planes), torch.stack(alphas)
