"""The math of binary and low-bit networks: small pure functions with custom gradients.

Every function here is independent of the rest of bnnbench (it needs only ``torch``) and can be
used in any PyTorch model. Each docstring gives the forward formula, the gradient that is
actually implemented, and the paper it comes from (larq style).

Conventions used throughout
---------------------------
* ``sign(0) = +1`` (BinaryNet, Eq. 1 of Tang et al. 2017): a binarized value is never 0; and
  ``sign(NaN) = +1`` (-1 iff ``x < 0``), as the packed kernels store it.
* ``1{.}`` is the indicator function; ``g`` is the incoming gradient ``dL/d(output)``.
* "STE" (straight-through estimator, Bengio et al. 2013; Hubara/Courbariaux et al. 2016): the
  backward pass replaces the derivative of a step function by that of a surrogate; the surrogate is
  named in each docstring.
* Bit widths are ints ``>= 1``; for the DoReFa functions ``bits >= 32`` means "full precision"
  (the identity, as in the DoReFa authors' code). Bad arguments raise ``ValueError``.

References
----------
[BC]   Courbariaux, Bengio, David. BinaryConnect. NeurIPS 2015.
[BNN]  Hubara, Courbariaux, Soudry, El-Yaniv, Bengio. Binarized Neural Networks. NeurIPS 2016
       (arXiv 1602.02830, "BinaryNet").
[XNOR] Rastegari, Ordonez, Redmon, Farhadi. XNOR-Net. ECCV 2016.
[DRF]  Zhou, Wu, Ni, Zhou, Wen, Zou. DoReFa-Net. arXiv 1606.06160.
[ABC]  Lin, Zhao, Pan. Towards Accurate Binary Convolutional Neural Network. NeurIPS 2017.
[TANG] Tang, Hua, Wang. How to Train a Compact Binary Neural Network with High Accuracy? AAAI 2017.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sign_ste",
    "stochastic_sign",
    "xnor_weight",
    "xnor_activation_scale",
    "dorefa_quantize",
    "dorefa_weight",
    "dorefa_activation",
    "dorefa_gradient",
    "abc_weight_bases",
    "abc_weight",
    "abc_activation",
    "residual_binarize",
    "bipolar_regularizer",
]

FULL_PRECISION_BITS = 32
"""DoReFa functions treat ``bits >= FULL_PRECISION_BITS`` as "not quantized" (identity)."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _pm1(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, same dtype as x (no gradient): -1 iff ``x < 0``, so NaN -> +1,
    the one rule of every path (the packed kernels store bit 1 iff ``x < 0``, at no cost)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x < 0, -one, one)


def _hardtanh_mask(x: Tensor, dtype: torch.dtype) -> Tensor:
    return (x.abs() <= 1).to(dtype)


# --------------------------------------------------------------------------------------------
# BinaryConnect / BinaryNet
# --------------------------------------------------------------------------------------------
class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, cancel: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.cancel = cancel
        return _pm1(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (g * _hardtanh_mask(x, g.dtype) if ctx.cancel else g), None


def sign_ste(x: Tensor, cancel: bool = True) -> Tensor:
    r"""Deterministic binarization with a straight-through estimator.

    Forward:  ``y = -1 if x < 0 else +1``  (sign(0) = +1, and NaN -> +1).

    Backward: ``cancel=True`` (activations): ``dL/dx = g * 1{|x| <= 1}``, the derivative of
    ``hardtanh(x)`` ("cancels the gradient when x is too large", [BNN] Sec. 1.3; Tang
    Algorithm 1, ``g_A = g o 1_{|A|<=1}``). ``cancel=False`` (the authors' *weight* gradient in
    [BC]/[BNN]: the gradient w.r.t. ``W_b`` is applied to the latent ``W`` unchanged, Algorithm 1
    and their Theano ``binary_net.py``): ``dL/dx = g``.

    Used for weights and activations by [BC], [BNN], [TANG].
    """
    return _SignSTE.apply(x, cancel)


class _StochasticSign(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, generator: torch.Generator | None, cancel: bool
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.cancel = cancel
        p = ((x + 1) / 2).clamp(0, 1)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(u < p, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (g * _hardtanh_mask(x, g.dtype) if ctx.cancel else g), None, None


def stochastic_sign(x: Tensor, generator: torch.Generator | None = None,
                    cancel: bool = True) -> Tensor:
    r"""Stochastic binarization ([BC] Sec. 2.2, [BNN] Sec. 1.1).

    Forward:  ``y = +1`` with probability ``p = hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``,
    else ``-1``; drawn as ``y = +1 iff u < p`` with ``u ~ U[0, 1)`` from ``generator`` (so
    ``x >= 1`` always gives +1 and ``x <= -1`` always -1). ``E[y] = clip(x, -1, 1)``.

    Backward: the same STE as :func:`sign_ste`: ``dL/dx = g * 1{|x| <= 1}``, or ``g`` with
    ``cancel=False``.
    """
    return _StochasticSign.apply(x, generator, cancel)


# --------------------------------------------------------------------------------------------
# XNOR-Net / BWN
# --------------------------------------------------------------------------------------------
class _XnorWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:  # type: ignore[override]
        dims = tuple(range(1, w.dim()))
        s = _pm1(w)
        alpha = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()
        ctx.save_for_backward(w, s, alpha)
        return alpha * s

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        w, s, alpha = ctx.saved_tensors
        dims = tuple(range(1, w.dim()))
        n = w[0].numel() if dims else 1
        direct = alpha * g * _hardtanh_mask(w, g.dtype)
        gs = (g * s).sum(dim=dims, keepdim=True) if dims else g * s
        return direct + s * gs / n


def xnor_weight(w: Tensor) -> Tensor:
    r"""Scaled binary weights of XNOR-Net / BWN ([XNOR] Sec. 3.1, Eq. 4-6).

    Forward:  ``W~ = alpha * sign(W)`` with one ``alpha`` per output unit (first dim):
    ``alpha_o = mean_{c,h,w} |W_{o,c,h,w}| = ||W_o||_1 / n``, ``n = W[0].numel()``
    (for 1-D ``w`` every element is its own unit: ``alpha = |w|``).

    Backward: the exact derivative of ``alpha(W) * sign(W)`` with the hard-tanh STE for sign and
    ``d|W_j|/dW_j = sign(W_j)``:

        ``dL/dW_i = alpha_o * g_i * 1{|W_i| <= 1}  +  sign(W_i) / n * sum_{j in o} g_j sign(W_j)``

    [XNOR] Eq. 7 prints the element-wise simplification ``g_i (1/n + alpha 1{|W_i| <= 1})``
    (it drops the sign cross terms of the mean); we implement the full chain rule, which is what
    autograd gives for ``w.abs().mean(dims) * sign_ste(w)`` (tested against that).
    """
    return _XnorWeight.apply(w)


def xnor_activation_scale(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    r"""XNOR-Net's activation scaling map ``K`` ([XNOR] Sec. 3.2, Fig. 2).

    Forward:  ``A = mean_c |I_{:, c, :, :}|`` (shape ``(N, 1, H, W)``), then
    ``K = A * k`` (2-D convolution) with the box filter ``k_ij = 1 / (kh * kw)`` and the binary
    conv's ``stride`` and zero ``padding``; result shape ``(N, 1, H', W')`` with ``H', W'`` the
    binary conv's output size, so ``conv(sign(I), sign(W)) * K * alpha`` broadcasts.

    Backward: ordinary autograd (``K`` is a smooth function of ``|I|``;
    ``d|x|/dx = sign(x)`` with 0 at 0).
    """
    if x.dim() != 4:
        raise ValueError(f"xnor_activation_scale expects an (N, C, H, W) tensor, got {x.dim()}-D")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    _check_int("kernel_size", kh)
    _check_int("kernel_size", kw)
    a = x.abs().mean(dim=1, keepdim=True)
    box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
    return F.conv2d(a, box, stride=stride, padding=padding)


# --------------------------------------------------------------------------------------------
# DoReFa-Net
# --------------------------------------------------------------------------------------------
class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, levels: float) -> Tensor:  # type: ignore[override]
        return torch.round(x * levels) / levels

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return g, None


def dorefa_quantize(x: Tensor, bits: int) -> Tensor:
    r"""DoReFa's k-bit quantizer of values in [0, 1] ([DRF] Sec. 2.3).

    Forward:  ``quantize_k(x) = round((2^k - 1) x) / (2^k - 1)`` (round half to even, as
    ``tf.round``); ``bits >= 32`` returns ``x`` unchanged.

    Backward: straight-through, ``dL/dx = g`` (identity).
    """
    _check_int("bits", bits)
    if bits >= FULL_PRECISION_BITS:
        return x
    return _RoundSTE.apply(x, float(2**bits - 1))


class _ScaledSignIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:  # type: ignore[override]
        return _pm1(w) * w.abs().mean()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        return g


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    r"""DoReFa's k-bit weights ([DRF] Sec. 2.3).

    Forward:
      * ``bits == 1``: ``W~ = sign(W) * E``, ``E = mean |W|`` over the whole tensor (one scalar
        per layer).
      * ``1 < bits < 32``: ``W~ = 2 quantize_k(tanh(W) / (2 max|tanh(W)|) + 1/2) - 1`` in [-1, 1].
      * ``bits >= 32``: ``W`` unchanged.

    Backward:
      * ``bits == 1``: identity, ``dL/dW = g`` (the authors' code overrides sign's gradient with
        the identity and stops the gradient through ``E``: ``d(sign(W/E) E)/dW = 1``).
      * ``bits > 1``: autograd through ``tanh`` and ``max`` (the max is *not* detached, as in the
        authors' code) with the straight-through quantizer.
    """
    _check_int("bits", bits)
    if bits >= FULL_PRECISION_BITS:
        return w
    if bits == 1:
        return _ScaledSignIdentity.apply(w)
    t = torch.tanh(w)
    t = t / (2 * t.abs().max().clamp_min(torch.finfo(t.dtype).tiny)) + 0.5
    return 2 * dorefa_quantize(t, bits) - 1


def dorefa_activation(x: Tensor, bits: int) -> Tensor:
    r"""DoReFa's k-bit activations ([DRF] Sec. 2.4).

    Forward:  ``quantize_k(clip(x, 0, 1))``; ``bits >= 32`` gives ``clip(x, 0, 1)``.

    Backward: ``dL/dx = g * 1{0 <= x <= 1}`` (the clip's derivative, boundaries included, times
    the straight-through quantizer).
    """
    _check_int("bits", bits)
    return dorefa_quantize(x.clamp(0, 1), bits)


class _QuantizeGrad(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, bits: int, generator: torch.Generator | None
    ) -> Tensor:
        ctx.bits = bits
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return _quantize_gradient(g, ctx.bits, ctx.generator), None, None


def _quantize_gradient(g: Tensor, bits: int, generator: torch.Generator | None) -> Tensor:
    n = float(2**bits - 1)
    dims = tuple(range(1, g.dim()))
    m = g.abs().amax(dim=dims, keepdim=True) if dims else g.abs()
    safe = torch.where(m > 0, m, torch.ones_like(m))
    noise = (torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype) - 0.5) / n
    y = (g / (2 * safe) + 0.5 + noise).clamp(0, 1)
    return 2 * m * (torch.round(y * n) / n - 0.5)


def dorefa_gradient(x: Tensor, bits: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Quantize the gradient that flows back through ``x`` to k bits ([DRF] Sec. 2.5).

    Forward:  identity, ``y = x``.

    Backward: with ``dr = g`` and ``m = max |dr|`` taken per sample (over every dim but the first;
    per element for 1-D ``x``), ``n = 2^k - 1``:

        ``dL/dx = 2 m [quantize_k(clip(dr / (2 m) + 1/2 + N(k), 0, 1)) - 1/2]``,
        ``N(k) ~ U(-0.5, 0.5) / n``

    (the ``clip`` is in the authors' code, not in the paper's formula; it changes nothing except
    when the noise pushes a value past the grid ends). This is stochastic rounding: unbiased away
    from the ends, and ``|dL/dx - dr| <= 2 m / n``. Rows with ``m = 0`` give 0. ``generator``
    makes the noise reproducible; ``bits >= 32`` is the identity.
    """
    _check_int("bits", bits)
    if bits >= FULL_PRECISION_BITS:
        return x
    return _QuantizeGrad.apply(x, bits, generator)


# --------------------------------------------------------------------------------------------
# ABC-Net
# --------------------------------------------------------------------------------------------
def _solve_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


def abc_weight_bases(w: Tensor, num_bases: int,
                     channelwise: bool = False) -> tuple[Tensor, Tensor]:
    r"""ABC-Net's binary weight bases and their least-squares coefficients ([ABC] Sec. 3.1).

    Bases:  ``B_i = sign(W - mean(W) + u_i std(W))``, ``u_i = -1 + (i - 1) 2 / (M - 1)`` for
    ``i = 1..M`` (``u = 0`` when ``M = 1``), mean and (population, ``correction=0``) std over the
    whole tensor. Returned stacked, shape ``(M, *w.shape)``, dtype of ``w``.

    Coefficients: ``alpha = argmin ||vec(W) - B alpha||_2`` with ``B = [vec(B_1) .. vec(B_M)]``,
    solved in float64 as ``alpha = pinv(B^T B) B^T vec(W)``: the minimum-norm least-squares
    solution, so rank-deficient ``B`` (repeated bases, e.g. a constant ``W``) is handled.
    Shape ``(M,)``.

    ``channelwise=True`` (the paper's channel-wise variant, Sec. 3.1): the same construction on
    each output channel ``W[o]`` separately (its own mean, std, bases and least-squares
    ``alpha``); ``alphas`` then has shape ``(M, O)``. Needs ``w.dim() >= 2``.

    No gradient flows through either output (they are recomputed from ``W`` each forward); see
    :func:`abc_weight` for the trainable approximation.
    """
    _check_int("num_bases", num_bases)
    if channelwise and w.dim() < 2:
        raise ValueError(f"channel-wise bases need a weight with an output-channel dim, got "
                         f"{w.dim()}-D")
    with torch.no_grad():
        wd = w.detach()
        # rows: one per fitted unit (the whole tensor, or each output channel)
        rows = wd.reshape(wd.shape[0], -1) if channelwise else wd.reshape(1, -1)
        mean = rows.mean(dim=1, keepdim=True)
        std = (rows.std(dim=1, correction=0, keepdim=True) if rows.shape[1] > 1
               else torch.zeros_like(mean))
        if num_bases == 1:
            u = torch.zeros(1, dtype=w.dtype, device=w.device)
        else:
            u = torch.linspace(-1.0, 1.0, num_bases, dtype=w.dtype, device=w.device)
        bases = _pm1(rows.unsqueeze(0) - mean + u.view(-1, 1, 1) * std)  # (M, rows, n)
        dt = _solve_dtype(w)
        b = bases.transpose(0, 1).to(dt)  # (rows, M, n) = B^T per row
        gram = b @ b.transpose(1, 2)  # (rows, M, M)
        alphas = torch.linalg.pinv(gram, hermitian=True) @ (b @ rows.to(dt).unsqueeze(-1))
        alphas = alphas.squeeze(-1).T.to(w.dtype)  # (M, rows)
    bases = bases.reshape(num_bases, *w.shape)
    return bases, (alphas if channelwise else alphas[:, 0])


def _alpha_view(alphas: Tensor, w: Tensor) -> Tensor:
    """``alphas`` ``(M,)`` or ``(M, O)`` shaped to broadcast against ``(M, *w.shape)``."""
    if alphas.dim() == 1:
        return alphas.view(-1, *([1] * w.dim()))
    return alphas.view(alphas.shape[0], alphas.shape[1], *([1] * (w.dim() - 1)))


class _AbcWeight(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, w: Tensor, num_bases: int, channelwise: bool, alpha_grad: bool
    ) -> Tensor:
        bases, alphas = abc_weight_bases(w, num_bases, channelwise)
        ctx.alpha_grad = alpha_grad
        if alpha_grad:  # (sum_m alpha_m), per output channel when channel-wise
            ctx.save_for_backward(_alpha_view(alphas, w).sum(0))
        return (_alpha_view(alphas, w) * bases).sum(0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        if ctx.alpha_grad:
            (alpha_sum,) = ctx.saved_tensors
            return g * alpha_sum, None, None, None
        return g, None, None, None


def abc_weight(w: Tensor, num_bases: int, channelwise: bool = False,
               alpha_grad: bool = False) -> Tensor:
    r"""ABC-Net's weight approximation ``W~ = sum_i alpha_i B_i`` ([ABC] Sec. 3.1).

    Forward:  bases and coefficients from :func:`abc_weight_bases` (``channelwise``: one set per
    output channel).

    Backward (the STE ``dB_i/dW = 1``; the ``alpha_i`` are constants of the forward pass):
      * ``alpha_grad=False``: straight through, ``dL/dW = dL/dW~``.
      * ``alpha_grad=True``: the paper's Sec. 3.1 gradient
        ``dc/dW = dc/dO (sum_i alpha_i dO_i/dB_i dB_i/dW) = sum_i alpha_i dc/dB_i``, where
        ``O_i = Conv(B_i, A)`` is the i-th binary convolution and ``O = sum_i alpha_i O_i``; the
        conv is linear in its weight, so ``dc/dO dO_i/dB_i = dL/dW~`` for every i and
        ``dL/dW = (sum_i alpha_i) dL/dW~`` (per output channel when channel-wise).
    """
    _check_int("num_bases", num_bases)
    return _AbcWeight.apply(w, num_bases, bool(channelwise), bool(alpha_grad))


class _AbcActivation(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, shifts: Tensor, betas: Tensor
    ) -> Tensor:
        shape = (-1,) + (1,) * x.dim()
        z = x.unsqueeze(0) + shifts.view(shape).to(x.dtype)  # (N, *x.shape)
        h = _pm1(z - 0.5)  # 2 * 1{clip(z, 0, 1) >= 0.5} - 1 == +1 iff z >= 0.5
        ctx.save_for_backward(z, h, betas)
        return torch.tensordot(betas.to(x.dtype), h, dims=1)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        z, h, betas = ctx.saved_tensors
        inside = ((z >= 0) & (z <= 1)).to(g.dtype)  # d clip(z, 0, 1) / dz
        sum_dims = tuple(range(1, z.dim()))
        gz = g.unsqueeze(0) * inside  # (N, *x.shape), before the beta factor
        bshape = (-1,) + (1,) * g.dim()
        grad_x = (gz * betas.view(bshape).to(g.dtype)).sum(0)
        grad_shift = (gz.sum(dim=sum_dims) * betas.to(g.dtype)).to(betas.dtype)
        grad_beta = (g.unsqueeze(0) * h).sum(dim=sum_dims).to(betas.dtype)
        return grad_x, grad_shift, grad_beta


def abc_activation(x: Tensor, shifts: Tensor, betas: Tensor) -> Tensor:
    r"""ABC-Net's multiple binary activations ([ABC] Sec. 3.2).

    Forward:  ``A = sum_n beta_n H_{v_n}(x)``, ``H_v(x) = 2 * 1{clip(x + v, 0, 1) >= 0.5} - 1``
    (so ``H_v(x) = +1 iff x + v >= 0.5``); ``shifts = (v_1..v_N)`` and ``betas`` are 1-D tensors
    of length N, typically learnable.

    Backward (STE; the step ``1{h >= 0.5}`` is replaced by the slope of ``h_v = clip(x + v, 0, 1)``,
    i.e. 1 inside and 0 outside, as the paper's indicator ``1_{0 <= x + v <= 1}``; note that this
    is *not* the slope 2 of the surrogate ``2 h_v - 1``):

        ``dL/dx     = g * sum_n beta_n 1{0 <= x + v_n <= 1}``
        ``dL/dv_n   = sum_elements g * beta_n 1{0 <= x + v_n <= 1}``
        ``dL/dbeta_n = sum_elements g * H_{v_n}(x)``  (exact)
    """
    if shifts.dim() != 1 or betas.dim() != 1 or shifts.numel() != betas.numel():
        raise ValueError(
            f"shifts and betas must be 1-D of equal length, got {tuple(shifts.shape)} "
            f"and {tuple(betas.shape)}"
        )
    if shifts.numel() < 1:
        raise ValueError("abc_activation needs at least one (shift, beta) pair")
    return _AbcActivation.apply(x, shifts, betas)


# --------------------------------------------------------------------------------------------
# Tang et al. 2017 (compact BinaryNet)
# --------------------------------------------------------------------------------------------
def residual_planes(x: Tensor, num_bits: int,
                    per_sample: bool = False) -> tuple[Tensor, list[Tensor], Tensor]:
    """The forward of :func:`residual_binarize` with its binary planes: ``(approx, [H_i], alphas)``.

    ``H_i = sign(E_i)`` (sign(0) = +1, shape of ``x``) are what a packed inference path feeds
    to XNOR kernels; computing them here keeps one implementation of the recursion. No
    autograd (use :func:`residual_binarize` to train).
    """
    dims = tuple(range(1, x.dim())) if per_sample else tuple(range(x.dim()))
    approx = torch.zeros_like(x)
    planes, alphas = [], []
    for _ in range(num_bits):
        e = x - approx
        if per_sample and x.dim() == 1:
            a = e.abs()
        else:
            a = e.abs().mean(dim=dims, keepdim=per_sample)
        h = _pm1(e)
        approx = approx + a * h
        planes.append(h)
        alphas.append(a.reshape(-1) if per_sample else a)
    return approx, planes, torch.stack(alphas)


class _ResidualBinarize(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, num_bits: int, per_sample: bool
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x)
        approx, _, alphas = residual_planes(x, num_bits, per_sample)
        ctx.mark_non_differentiable(alphas)
        return approx, alphas

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor, _g_alphas: Tensor | None
    ) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return g * _hardtanh_mask(x, g.dtype), None, None


def residual_binarize(
    x: Tensor, num_bits: int, per_sample: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Tang et al.'s multiple (residual) binarization of activations ([TANG] Eq. 3).

    Forward:  ``E_1 = x``; for ``i = 1..m``: ``H_i = sign(E_i)``, ``alpha_i = mean |E_i|``,
    ``E_{i+1} = E_i - alpha_i H_i``; returns ``approx = sum_i alpha_i H_i`` (shape of ``x``) and
    the ``alphas``. ``alpha_i`` is the L2-optimal scale for ``H_i``, so the squared error drops
    by exactly ``n alpha_i^2`` at each step.

    Scope of the mean: ``per_sample=False`` (the paper: one ``alpha_i`` per layer activation
    tensor, i.e. over the whole batch; ``alphas`` has shape ``(m,)``); ``per_sample=True`` takes
    the mean over every dim but the first, one ``alpha`` per sample (``alphas`` shape ``(m, N)``),
    so inference on a sample does not depend on the rest of its batch.

    Backward: ``dL/dx = g * 1{|x| <= 1}`` (Tang Algorithm 1, ``g_A = g o 1_{|A| <= 1}``); the
    ``alphas`` output carries no gradient.
    """
    _check_int("num_bits", num_bits)
    approx, alphas = _ResidualBinarize.apply(x, num_bits, bool(per_sample))
    return approx, alphas.detach()


def bipolar_regularizer(weights: Iterable[Tensor]) -> Tensor:
    r"""Tang et al.'s bipolar regularizer ([TANG] Eq. 2).

    Value:    ``R(W) = sum_l sum_ij (1 - W_{l,ij}^2)``, to be added to the loss as
    ``lambda * R`` (paper: ``lambda = 5e-7``); minimizing it drives latent weights towards +-1
    (with clipping to [-1, 1]) instead of towards 0 as L2 does.

    Gradient: ``dR/dW = -2 W`` (ordinary autograd). An empty iterable gives ``tensor(0.)``.
    """
    total: Tensor | None = None
    for w in weights:
        term = (1 - w * w).sum()
        total = term if total is None else total + term
    return torch.zeros(()) if total is None else total
