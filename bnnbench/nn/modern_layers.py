"""Binary layers of the 2018-2020 baselines: Bi-Real Net, ReActNet and XNOR-Net++.

Math (each function's docstring has the forward and the gradient that is implemented):

* :func:`approx_sign` -- Bi-Real Net's ApproxSign: the forward is sign, the backward the slope of
  the piecewise-quadratic ``F(x)`` (Liu et al. 2018, Eq. 6), i.e. ``2 - 2|x|`` on ``|x| < 1``.
* :func:`magnitude_sign` -- Bi-Real Net's magnitude-aware weights ``alpha_o sign(W)`` with the
  magnitude-aware gradient (Sec. 3.3), or the authors' PyTorch gradient.

Modules:

* :class:`ApproxSignQuantizer`, :class:`MagnitudeSignQuantizer`: the two functions as quantizers.
* :class:`LearnableShift`: one learnable value per channel added to the input (ReActNet's RSign
  threshold and RPReLU shifts; the authors' ``LearnableBias``).
* :class:`RPReLU`: ReActNet's ``PReLU(x - gamma) + zeta`` per channel.
* :class:`SignConv2d` / :class:`SignLinear`: a quantized layer whose inputs are always sign
  (ApproxSign forward = sign) and whose weights are ``a_o sign(W)``: the packed XNOR-popcount
  kernels run it after export (:meth:`kernel_forward`).
* :class:`GammaConv2d` / :class:`GammaLinear`: XNOR-Net++'s learned output scale ``Gamma``.
* :class:`BinaryUnit`: ``act(norm(layer(shift(x))) + shortcut(x))`` -- one binary conv with its
  own real-valued shortcut (Bi-Real Net Fig. 1; ReActNet adds ``shift`` and ``act``).
* :class:`BiRealBlock`: a ResNet BasicBlock rebuilt as two such units, keeping the host's
  parameter names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``).
* :class:`PreNormUnit`: ``act(layer(norm(x))) + shortcut(x)`` -- XNOR-Net++'s block as its
  authors' Real-to-Binary strong baseline builds it (BN -> sign -> conv -> Gamma -> PReLU -> add).
* :class:`ChannelRepeat`: ``[x, x, ...]`` along the channels (ReActNet-A's doubling shortcut).
* :class:`ReActNetABlock`: ReActNet-A's block (MobileNet-V1's separable pair as two units with
  real shortcuts; the 1x1 unit doubles the channels by concatenation), the block of
  ``model=reactnet_a``.

References
----------
[BIREAL] Liu, Wu, Luo, Yang, Liu, Cheng. Bi-Real Net: Enhancing the Performance of 1-bit CNNs
         with Improved Representational Capability and Advanced Training Algorithm. ECCV 2018;
         authors' code github.com/liuzechun/Bi-Real-net (pytorch_implementation/BiReal18_34).
[REACT]  Liu, Shen, Savvides, Cheng. ReActNet: Towards Precise Binary Neural Network with
         Generalized Activation Functions. ECCV 2020; authors' code github.com/liuzechun/ReActNet
         (resnet/*/birealnet.py, mobilenet/*/reactnet.py).
[XNORPP] Bulat, Tzimiropoulos. XNOR-Net++: Improved Binary Neural Networks. BMVC 2019.
[R2B]    Martinez, Yang, Bulat, Tzimiropoulos. Training Binary Neural Networks with Real-to-Binary
         Convolutions. ICLR 2020 (Sec. 4.1, the strong baseline; larq zoo
         ``larq_zoo/literature/real_to_bin_nets.py``, ``StrongBaselineNet``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError
from bnnbench.nn.layers import QuantConv2d, QuantLinear
from bnnbench.nn.quantizers import Quantizer

WEIGHT_GRADIENTS = ("paper", "code")


def _pm1(x: Tensor) -> Tensor:
    """sign with sign(0) = sign(NaN) = +1 (-1 iff x < 0: the convention of bnnbench.functional
    and the packed kernels)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x < 0, -one, one)


# ------------------------------------------------------------------------------------- functions
class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _pm1(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * (2 - 2 * x.abs()).clamp_min(0)


def approx_sign(x: Tensor) -> Tensor:
    r"""Bi-Real Net's ApproxSign ([BIREAL] Sec. 3.2, Eq. 6; ReActNet uses it unchanged).

    Forward:  ``sign(x)`` with ``sign(0) = +1`` (the authors' ``torch.sign`` gives 0 at exactly 0;
    a binary activation is never 0 here, as the packed kernels need).

    Backward: the derivative of the piecewise polynomial
    ``F(x) = -1 (x < -1); 2x + x^2 (-1 <= x < 0); 2x - x^2 (0 <= x < 1); 1 (x >= 1)``:

        ``dL/dx = g * (2 - 2|x|) * 1{|x| < 1}``  (= ``g * max(0, 2 - 2|x|)``)

    a triangle of area 2 instead of the STE's rectangle ``1{|x| <= 1}``. (The authors' code gets
    it as ``sign(x).detach() - F(x).detach() + F(x)``.)
    """
    return _ApproxSign.apply(x)


class _MagnitudeSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, paper: bool) -> Tensor:  # type: ignore[override]
        dims = tuple(range(1, w.dim()))
        alpha = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()
        ctx.save_for_backward(w, alpha)
        ctx.paper = paper
        return alpha * _pm1(w)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        if ctx.paper:
            return g * alpha * (w.abs() < 1).to(g.dtype), None
        return g * (w.abs() <= 1).to(g.dtype), None


def magnitude_sign(w: Tensor, gradient: str = "paper") -> Tensor:
    r"""Bi-Real Net's magnitude-aware binary weights ([BIREAL] Sec. 3.3).

    Forward:  ``W_b = alpha_o sign(W)``, ``alpha_o = ||W_o||_1 / n`` (the mean ``|W|`` of output
    channel ``o``, ``n = W[0].numel()``; both the paper and the authors' code), ``sign(0) = +1``.
    At test time ``alpha_o`` could be folded into the next BatchNorm; bnnbench keeps it and
    exports it as the weight's per-channel scale.

    Backward (``alpha`` is a constant of the forward pass, as the authors' ``.detach()``):

    * ``gradient="paper"`` (the magnitude-aware gradient, Sec. 3.3:
      ``dW_b/dW ~ ||W||_1 / n * 1{|W| < 1}``): ``dL/dW = g * alpha_o * 1{|W| < 1}``;
    * ``gradient="code"`` (the authors' PyTorch ``HardBinaryConv``, also ReActNet's: the
      gradient of ``clamp(W, -1, 1)``): ``dL/dW = g * 1{|W| <= 1}``.
    """
    if gradient not in WEIGHT_GRADIENTS:
        raise BnnbenchError(f"method.weight_gradient={gradient!r} is not valid; choose one of: "
                            f"{', '.join(WEIGHT_GRADIENTS)}")
    return _MagnitudeSign.apply(w, gradient == "paper")


# ------------------------------------------------------------------------------------- quantizers
class ApproxSignQuantizer(Quantizer):
    """Binary activations with Bi-Real Net's ApproxSign gradient (:func:`approx_sign`)."""

    precision = 1

    def forward(self, x: Tensor) -> Tensor:
        return approx_sign(x)


class MagnitudeSignQuantizer(Quantizer):
    """``alpha_o sign(W)`` with the magnitude-aware gradient (:func:`magnitude_sign`).

    Deployed: 1 bit per weight and one float32 ``alpha_o`` per output channel.
    """

    precision = 1
    scales_per_channel = 1

    def __init__(self, gradient: str = "paper") -> None:
        super().__init__()
        magnitude_sign(torch.zeros(1, 1), gradient)  # validates the choice, one line
        self.gradient = gradient

    def forward(self, w: Tensor) -> Tensor:
        return magnitude_sign(w, self.gradient)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient}"


# ------------------------------------------------------------------------------------- ReActNet
def _per_channel(x: Tensor, v: Tensor) -> Tensor:
    """Broadcast a (C,) vector over dim 1 of an (N, C, ...) tensor."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class LearnableShift(nn.Module):
    """``y = x + b_c``, one learnable ``b`` per channel (dim 1), initialised to 0.

    ReActNet's RSign is ``sign(x + b)`` with ``-b`` the learned threshold ([REACT] Eq. 2; the
    authors' ``move0`` before ``BinaryActivation``); its RPReLU shifts are two more of these.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + _per_channel(x, self.shift)

    def extra_repr(self) -> str:
        return f"channels={self.shift.numel()}"


class RPReLU(nn.Module):
    r"""ReActNet's RPReLU ([REACT] Eq. 3), per channel ``c``:

        ``f(x) = x - gamma_c + zeta_c``          if ``x > gamma_c``
        ``f(x) = beta_c (x - gamma_c) + zeta_c`` otherwise

    stored as the authors' code computes it, ``move2(PReLU(move1(x)))``: ``shift_in = -gamma``,
    ``slope = beta`` (PReLU, init 0.25), ``shift_out = zeta`` (both shifts init 0).
    Gradients: ordinary autograd (``df/dx = 1`` or ``beta``; ``df/dbeta = min(x - gamma, 0)``).
    """

    def __init__(self, channels: int, slope: float = 0.25) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(slope)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        z = x + _per_channel(x, self.shift_in)
        z = torch.where(z > 0, z, _per_channel(x, self.slope) * z)
        return z + _per_channel(x, self.shift_out)

    def extra_repr(self) -> str:
        return f"channels={self.slope.numel()}"


# ------------------------------------------------------------------------------------- layers
class SignConv2d(QuantConv2d):
    """A quantized conv whose input quantizer's forward is sign (sign(0) = +1) and whose weight
    quantizer gives ``a_o sign(W)``: after export it runs on the packed kernels
    (``binary_conv2d``: XNOR-popcount over valid taps, times ``a_o``, plus bias)."""

    def kernel_forward(self, x: Tensor, kernels: Any, packed: Tensor,
                       scale: Tensor | None) -> Tensor:
        return kernels.binary_conv2d(x, packed, scale, self.bias, stride=self.stride,
                                     padding=self.padding, groups=self.groups)


def _packed_linear(x: Tensor, kernels: Any, packed: Tensor, scale: Tensor | None,
                   bias: Tensor | None) -> Tensor:
    """``scale_o * xnor_dot(sign(x), sign(W_o)) + b_o`` over the last dim of ``x``."""
    rows = x.reshape(-1, x.shape[-1])
    ones = torch.ones(1, rows.shape[0], dtype=torch.float32, device=x.device)
    y = kernels.multibit_xnor_gemm(kernels.pack_signs(rows)[None], packed, ones, rows.shape[-1],
                                   scale, bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


class SignLinear(QuantLinear):
    """The linear twin of :class:`SignConv2d` (``multibit_xnor_gemm`` with one plane)."""

    def kernel_forward(self, x: Tensor, kernels: Any, packed: Tensor,
                       scale: Tensor | None) -> Tensor:
        return _packed_linear(x, kernels, packed, scale, self.bias)


class _GammaMixin:
    """XNOR-Net++'s learned scale ``Gamma`` on a sign x sign layer's output ([XNORPP] Sec. 3).

    ``Y = (sign(X) (*) sign(W)) . Gamma + b``, ``Gamma`` learned by backpropagation instead of
    XNOR-Net's analytic ``alpha K``. Factorized variant (the paper's best on ImageNet):
    ``Gamma = alpha (x) beta (x) gamma``, ``alpha`` in R^o, ``beta`` in R^{h_out},
    ``gamma`` in R^{w_out}; channel variant: ``Gamma = alpha``. Linear layers have no spatial
    dims: ``Gamma = alpha``. Init: ``alpha_o = mean|W_o|`` (XNOR-Net's weight scale, so training
    starts from BWN's scale), ``beta = gamma = 1``. Gradients: exact (autograd).
    """

    scale_channel: nn.Parameter
    scale_height: nn.Parameter | None
    scale_width: nn.Parameter | None

    def _init_gamma(self, out: int, out_size: tuple[int, int] | None) -> None:
        self.scale_channel = nn.Parameter(torch.ones(out))
        if out_size is None:
            self.scale_height = self.scale_width = None
        else:
            self.scale_height = nn.Parameter(torch.ones(out_size[0]))
            self.scale_width = nn.Parameter(torch.ones(out_size[1]))

    def output_scale(self) -> Tensor:
        """``Gamma`` shaped to broadcast over the layer's output."""
        a = self.scale_channel
        if isinstance(self, nn.Conv2d):
            a = a.view(-1, 1, 1)
            if self.scale_height is not None:
                a = a * self.scale_height.view(1, -1, 1) * self.scale_width.view(1, 1, -1)
        return a

    def _scaled(self, y: Tensor) -> Tensor:
        y = y * self.output_scale()
        if self.bias is not None:  # type: ignore[attr-defined]
            y = y + (self.bias.view(-1, 1, 1) if y.dim() == 4 else self.bias)  # type: ignore
        return y


class GammaConv2d(_GammaMixin, QuantConv2d):
    """``conv(sign(x), sign(W)) * Gamma + b`` (see :class:`_GammaMixin`); ``out_size`` (h_out,
    w_out) gives the factorized ``Gamma``, None the per-channel one."""

    def __init__(self, *args: Any, out_size: tuple[int, int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_gamma(self.out_channels, out_size)

    def forward(self, x: Tensor) -> Tensor:
        return self._scaled(self._conv_forward(self.quantized_input(x), self.quantized_weight(),
                                               None))

    def kernel_forward(self, x: Tensor, kernels: Any, packed: Tensor,
                       scale: Tensor | None) -> Tensor:
        y = kernels.binary_conv2d(x, packed, scale, None, stride=self.stride,
                                  padding=self.padding, groups=self.groups)
        return self._scaled(y)


class GammaLinear(_GammaMixin, QuantLinear):
    """``sign(x) @ sign(W).T * alpha + b`` (XNOR-Net++ on a fully connected layer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_gamma(self.out_features, None)

    def forward(self, x: Tensor) -> Tensor:
        return self._scaled(nn.functional.linear(self.quantized_input(x),
                                                 self.quantized_weight()))

    def kernel_forward(self, x: Tensor, kernels: Any, packed: Tensor,
                       scale: Tensor | None) -> Tensor:
        return self._scaled(_packed_linear(x, kernels, packed, scale, None))


# ------------------------------------------------------------------------------------- blocks
class BinaryUnit(nn.Module):
    """``act(norm(layer(shift(x))) + shortcut(x))``: one binary layer with its own shortcut.

    Bi-Real Net's unit (Fig. 1 of [BIREAL]: Sign -> 1-bit conv -> BatchNorm -> addition of the
    real-valued input); ReActNet's adds ``shift`` (RSign's learned threshold) and ``act``
    (RPReLU) after the addition ([REACT] Fig. 2, the authors' ``BasicBlock``). The layer's input
    quantizer binarizes ``shift(x)``; the shortcut carries the real ``x``. ``shortcut`` None: no
    addition (the layer changes the shape and the host offers no real-valued path).
    """

    def __init__(self, layer: nn.Module, norm: nn.Module | None = None,
                 shortcut: nn.Module | None = None, shift: nn.Module | None = None,
                 act: nn.Module | None = None) -> None:
        super().__init__()
        self.shift = shift if shift is not None else nn.Identity()
        self.layer = layer
        self.norm = norm if norm is not None else nn.Identity()
        self.shortcut = shortcut
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.layer(self.shift(x)))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class PreNormUnit(nn.Module):
    r"""``y = act(layer(norm(x))) + shortcut(x)``: one binary layer behind its own BatchNorm.

    XNOR-Net++'s learned scale ``Gamma`` must reach what follows the layer: a BatchNorm right
    after it would cancel any per-channel scale, ``BN(a z) = BN(z)`` for ``a > 0``. The same
    authors' strong baseline ([R2B] Sec. 4.1, built on [XNORPP]; larq zoo's
    ``StrongBaselineNet.half_binary_block``) orders each half block

        ``BatchNorm -> sign -> binary conv -> Gamma -> PReLU -> + shortcut``

    with Bi-Real's real-valued shortcut around every binary conv: ``Gamma`` then scales the
    binary branch against the unscaled shortcut, so it changes the sum the next unit
    normalizes. ``norm`` normalizes the layer's *input* (the sign reads its output); the
    layer's input quantizer binarizes it and ``Gamma`` lives in the layer
    (:class:`GammaConv2d`). ``shortcut`` None: no addition (the layer changes the shape and the
    host offers no real-valued path). Gradients: autograd through every term (the sign's STE
    inside the layer).
    """

    def __init__(self, norm: nn.Module, layer: nn.Module, act: nn.Module | None = None,
                 shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.layer = layer
        self.act = act if act is not None else nn.Identity()
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.layer(self.norm(x)))
        return y if self.shortcut is None else y + self.shortcut(x)


class ChannelRepeat(nn.Module):
    """``[x, x, ...]`` (``copies`` times) along dim 1: ReActNet-A's shortcut where the 1x1
    conv doubles the channels (:class:`ReActNetABlock`)."""

    def __init__(self, copies: int) -> None:
        super().__init__()
        self.copies = copies

    def forward(self, x: Tensor) -> Tensor:
        return x if self.copies == 1 else torch.cat([x] * self.copies, dim=1)

    def extra_repr(self) -> str:
        return f"copies={self.copies}"


class BiRealBlock(nn.Module):
    """A ResNet BasicBlock as Bi-Real Net's two units (the authors' Bi-Real-18 builds 16 blocks
    of one conv each; this is the same network, keeping the host's parameter names):

        ``y1 = act1(bn1(conv1(shift1(x))) + downsample(x))``   (``x`` when no downsample)
        ``y2 = act2(bn2(conv2(shift2(y1))) + y1)``

    No ReLU anywhere (sign follows); ``shift*``/``act*`` are identities for Bi-Real Net and
    RSign shifts / RPReLU for ReActNet. ``downsample`` is the host's (1x1 conv + BN), or the
    authors' ``AvgPool2d(2) -> 1x1 conv (stride 1) -> BN`` (see ``avgpool_downsample``).
    """

    def __init__(self, conv1: nn.Module, bn1: nn.Module, conv2: nn.Module, bn2: nn.Module,
                 downsample: nn.Module | None, shift1: nn.Module | None = None,
                 act1: nn.Module | None = None, shift2: nn.Module | None = None,
                 act2: nn.Module | None = None) -> None:
        super().__init__()
        self.shift1 = shift1 if shift1 is not None else nn.Identity()
        self.conv1, self.bn1 = conv1, bn1
        self.downsample = downsample
        self.act1 = act1 if act1 is not None else nn.Identity()
        self.shift2 = shift2 if shift2 is not None else nn.Identity()
        self.conv2, self.bn2 = conv2, bn2
        self.act2 = act2 if act2 is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        y1 = self.act1(self.bn1(self.conv1(self.shift1(x))) + shortcut)
        return self.act2(self.bn2(self.conv2(self.shift2(y1))) + y1)


class ReActNetABlock(nn.Module):
    r"""ReActNet-A's block ([REACT] Sec. 3.1, Fig. 3; the authors' ``BasicBlock`` in
    mobilenet/2_step2/reactnet.py): MobileNet-V1's depthwise-separable pair with the 3x3
    depthwise conv replaced by a full 3x3 conv ``C -> C`` and a real-valued shortcut around each
    conv, ``C`` input and ``D`` output channels, ``D = C`` or ``D = 2C``:

        ``y1 = act1(bn1(conv(shift1(x))) + pool(x))``
        ``y2 = act2(bn2(pointwise(shift2(y1))) + [y1, y1])``   (``+ y1`` when ``D = C``)

    ``pool`` is ``AvgPool2d(2)`` when the 3x3 conv has stride 2 (the parameter-free downsampling
    shortcut), else the identity; ceil mode, so odd sizes give the conv's ``ceil(H / 2)`` (equal
    to the authors' floor mode on ImageNet's even sizes). For ``D = 2C`` the authors duplicate the
    1x1 conv (``binary_pw_down1/2``, ``C -> C`` each, their own BN each), add ``y1`` to both and
    concatenate; ``pointwise`` is those two convs stacked along the output channels
    (``C -> 2C``: rows ``:C`` are ``down1``, rows ``C:`` ``down2``) and ``bn2`` their two
    BatchNorms: BatchNorm and the per-filter weight scale act per output channel, so the function
    is the same, parameter for parameter.

    As a host (full precision): ``shift1``/``shift2`` are identities and ``act1``/``act2`` ReLU
    (after the addition, as a ResNet). A method swaps the convs for binary ones and, for
    ReActNet, fills the shifts (RSign's learned thresholds, the authors' ``move11``/``move21``)
    and the activations (RPReLU: ``move12 -> prelu1 -> move13``, ``move22 -> prelu2 -> move23``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels) or stride not in (1, 2):
            raise ValueError(f"a ReActNet-A block maps C -> C or C -> 2C channels at stride 1 "
                             f"or 2, got {in_channels} -> {out_channels} at stride {stride}")
        self.shift1: nn.Module = nn.Identity()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pool: nn.Module = (nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2
                                else nn.Identity())
        self.act1: nn.Module = nn.ReLU()
        self.shift2: nn.Module = nn.Identity()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2: nn.Module = nn.ReLU()
        self.copies = out_channels // in_channels

    def forward(self, x: Tensor) -> Tensor:
        y1 = self.act1(self.bn1(self.conv(self.shift1(x))) + self.pool(x))
        shortcut = y1 if self.copies == 1 else torch.cat([y1] * self.copies, dim=1)
        return self.act2(self.bn2(self.pointwise(self.shift2(y1))) + shortcut)
