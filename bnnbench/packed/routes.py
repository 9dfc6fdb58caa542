"""Kernel routes: a loaded packed layer's forward on :mod:`bnnbench.kernels`' XNOR-popcount ops.

:func:`kernel_route` says which packed forward a layer can take, :func:`use_kernels` puts it in
place; the weight words come straight from the stored bits
(:func:`bnnbench.packed.packing.kernel_words_from_bits`), never through a float weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError
from bnnbench.nn.layers import QuantConv2d, QuantLinear
from bnnbench.nn.quantizers import Identity, SignQuantizer
from bnnbench.packed.encoding import PackedWeight
from bnnbench.packed.packing import kernel_words_from_bits


def _kernels() -> Any | None:
    try:
        from bnnbench import kernels as K  # type: ignore[attr-defined]
    except ImportError:
        return None
    needed = ("pack_signs", "xnor_gemm", "binary_conv2d")
    return K if all(hasattr(K, n) for n in needed) else None


def kernel_route(layer: nn.Module) -> str | None:
    """Which packed-kernel forward a loaded layer can take (None: keep its own forward).

    Every route needs sign weights (``sign`` encoding, any scale) and, for convs, dilation 1:

    * ``"sign"``: BinaryNet, exact class QuantLinear/QuantConv2d with deterministic sign inputs
      and unscaled weights: integer dot products, bit-exact with the trained forward;
    * ``"xnor"``: XNOR-Net's XnorLinear/XnorConv2d (sign inputs, per-channel alpha, optional
      activation scale K): ``alpha_o * K * xnor_dot + b``;
    * ``"residual"``: Tang et al.'s m residual binarizations of the input (QuantLinear/
      QuantConv2d with a ResidualSignQuantizer): ``sum_i a_i xnor_dot(H_i, W)``, one
      ``multibit_xnor_gemm`` for a linear layer, m packed convolutions for a conv;
    * ``"binary_weight"``: BinaryConnect / BWN linear layers (float inputs):
      ``binary_weight_gemm`` (no kernel for a conv with float inputs: those keep their forward).
    * ``"own"``: a layer class that defines ``kernel_forward(x, kernels, packed, scale)``
      (Bi-Real Net / ReActNet sign x sign layers, XNOR-Net++'s Gamma-scaled ones,
      :mod:`bnnbench.nn.modern_layers`) computes its packed forward itself.

    The scaled routes equal the trained forward up to float rounding (the sums are taken in
    another order), the ``sign`` route exactly.
    """
    from bnnbench.nn.paper_layers import XnorConv2d, XnorLinear
    from bnnbench.nn.paper_quantizers import ResidualSignQuantizer

    q = getattr(layer, "weight_quantizer", None)
    iq = getattr(layer, "input_quantizer", None)
    if not (isinstance(q, PackedWeight) and q.meta["encoding"] == "sign"):
        return None
    if isinstance(layer, nn.Conv2d) and layer.dilation != (1, 1):
        return None
    if callable(getattr(layer, "kernel_forward", None)):
        return "own"  # the layer runs its sign x sign product on the kernels itself
    sign_inputs = type(iq) is SignQuantizer and not iq.stochastic
    if type(layer) in (XnorLinear, XnorConv2d) and sign_inputs:
        return "xnor"
    if type(layer) in (QuantLinear, QuantConv2d):
        if sign_inputs and q.meta.get("scale") == "none":
            return "sign"
        if type(iq) is ResidualSignQuantizer:
            return "residual"
        if type(iq) is Identity and type(layer) is QuantLinear:
            return "binary_weight"
    return None


def use_kernels(net: nn.Module) -> int:
    """Route every eligible layer (:func:`kernel_route`) through bnnbench.kernels; returns how
    many (0 without kernels)."""
    K = _kernels()
    if K is None:
        return 0
    count = 0
    for _, layer in list(net.named_modules()):
        route = kernel_route(layer)
        if route is None:
            continue
        q = layer.weight_quantizer
        shape = [int(d) for d in q.meta["shape"]]
        # W = a_o s: the stored bits are s (bit 1 = W < 0, as the kernels pack), a_o goes after
        # the dot; the words are the stored bits themselves where the fan-in is a multiple of
        # 32 (no copy), else padded from them; never through a float weight
        packed = kernel_words_from_bits(q.bits[0], shape)
        scale = None
        if q.meta.get("scale") != "none":
            scale = q.scale.to(torch.float32).reshape(-1).expand(shape[0]).contiguous()
        layer.register_buffer("xnor_weight", packed, persistent=False)
        layer.register_buffer("xnor_scale", scale, persistent=False)
        forwards = _LINEAR_FORWARDS if isinstance(layer, QuantLinear) else _CONV_FORWARDS
        layer.forward = _checked(forwards[route]).__get__(layer)  # type: ignore[method-assign]
        count += 1
    return count


def check_input(layer: nn.Module, x: Any) -> None:
    """A loaded packed layer's float input has the layer's feature count: ``in_features`` in the
    last dim (linear), ``in_channels`` in dim -3 of (N, C, H, W) or (C, H, W) (conv); one
    BnnbenchError line otherwise, the same for every route (each kernel route and fused forward
    calls it; with ``kernels="never"`` a forward pre-hook does, :func:`check_input_hook`).

    The kernels see only word counts (ceil(features / 32)), so an input a few features short
    would run on its padding bits where the trained layer refuses it. Integer inputs pass: the
    packed signs a fused chain hands on (int32, :mod:`bnnbench.packed.fusion`) were sized by the
    producing kernel, and any other integer input is refused by the kernels themselves."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return
    if isinstance(layer, nn.Conv2d):
        want, got = layer.in_channels, (x.shape[-3] if x.dim() >= 3 else None)
    else:
        want, got = layer.in_features, (x.shape[-1] if x.dim() >= 1 else None)
    if got != want:
        raise BnnbenchError(f"packed {type(layer).__name__} takes {want} input features, got "
                            f"{got} (input shape {tuple(x.shape)})")


def check_input_hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
    """:func:`check_input` as a forward pre-hook (layers that keep their own forward)."""
    check_input(layer, args[0] if args else None)


def _checked(forward):
    """A route's forward with :func:`check_input` in front (a plain call: a forward pre-hook
    would put every call on nn.Module's slower hook path, ~8 us per layer)."""
    def run(self: nn.Module, x: Tensor) -> Tensor:
        check_input(self, x)
        return forward(self, x)
    run.__doc__ = forward.__doc__
    return run


def _linear_rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _sign_linear(self: nn.Module, x: Tensor) -> Tensor:
    """BinaryNet: sign(x) W^T + b from packed signs, exact integer dot products."""
    K = _kernels()
    y = K.xnor_gemm(K.pack_signs(_linear_rows(x)), self.xnor_weight, x.shape[-1]).to(x.dtype)
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], -1)


def _xnor_linear(self: nn.Module, x: Tensor) -> Tensor:
    """XNOR-Net: alpha_o * K_m * xnor_dot(sign(x_m), sign(W_o)) + b, K_m = mean|x_m| (or 1)."""
    K = _kernels()
    rows = _linear_rows(x)
    k_scale = (rows.abs().mean(dim=-1) if self.activation_scale
               else rows.new_ones(rows.shape[0])).to(torch.float32)
    y = K.multibit_xnor_gemm(K.pack_signs(rows)[None], self.xnor_weight, k_scale[None],
                             rows.shape[-1], self.xnor_scale, self.bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def _binary_weight_linear(self: nn.Module, x: Tensor) -> Tensor:
    """BinaryConnect / BWN: x (alpha_o sign(W))^T + b on packed 1-bit weights."""
    return _kernels().binary_weight_gemm(x, self.xnor_weight, self.xnor_scale, self.bias)


def _compiled_planes(x: Tensor) -> bool:
    """Whether the CPU kernels' residual binarization (bit for bit ``residual_planes`` +
    ``pack_signs``) applies: eager float32 contiguous CPU input with a batch dim."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2
            and x.is_contiguous() and type(x) is Tensor and not x.requires_grad
            and not torch.compiler.is_compiling())


def _residual_linear(self: nn.Module, x: Tensor) -> Tensor:
    """Tang: sum_i a_i xnor_dot(H_i, W) (* alpha_o) + b in one multibit_xnor_gemm launch."""
    from bnnbench.functional import residual_planes

    K = _kernels()
    iq = self.input_quantizer
    if _compiled_planes(x):  # the same planes and alphas, packed in compiled passes
        from bnnbench.kernels import cpu

        packed, alphas = cpu.residual_sign_planes(x, iq.num_bits, iq.per_sample)
    else:
        _, planes, alphas = residual_planes(x, iq.num_bits, iq.per_sample)
        packed = K.pack_signs(torch.stack([_linear_rows(h) for h in planes]))
    rows = x.shape[:-1].numel()
    if iq.per_sample:  # one alpha per sample, repeated over the sample's rows
        alphas = alphas.reshape(iq.num_bits, x.shape[0], 1).expand(
            -1, -1, rows // max(x.shape[0], 1)).reshape(iq.num_bits, rows)
    else:
        alphas = alphas.reshape(iq.num_bits, 1).expand(-1, rows)
    y = K.multibit_xnor_gemm(packed, self.xnor_weight, alphas.to(torch.float32).contiguous(),
                             x.shape[-1], self.xnor_scale, self.bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def _packed_conv(self: nn.Module, x: Tensor, scale: Tensor | None,
                 bias: Tensor | None) -> Tensor:
    return _kernels().binary_conv2d(x, self.xnor_weight, scale, bias, stride=self.stride,
                                    padding=self.padding, groups=self.groups)


def _sign_conv(self: nn.Module, x: Tensor) -> Tensor:
    """BinaryNet: conv(sign(x), W) + b, exact, zero padding as trained."""
    return _packed_conv(self, x, None, self.bias)


def _xnor_conv(self: nn.Module, x: Tensor) -> Tensor:
    """XNOR-Net: conv(sign(x), sign(W)) * alpha_o * K + b, K the box-filtered mean|x| map."""
    from bnnbench.functional import xnor_activation_scale

    y = _packed_conv(self, x, self.xnor_scale, None)
    if self.activation_scale:
        y = y * xnor_activation_scale(x, self.kernel_size, self.stride, self.padding)
    if self.bias is not None:
        y = y + self.bias.view(1, -1, 1, 1)
    return y


def _residual_conv(self: nn.Module, x: Tensor) -> Tensor:
    """Tang: sum_i a_i conv(H_i, sign(W)) (* alpha_o) + b, one packed conv per plane."""
    from bnnbench.functional import residual_planes

    iq = self.input_quantizer
    _, planes, alphas = residual_planes(x, iq.num_bits, iq.per_sample)
    y = None
    for h, a in zip(planes, alphas):
        term = _packed_conv(self, h, self.xnor_scale, None) * (
            a.view(-1, 1, 1, 1) if iq.per_sample else a)
        y = term if y is None else y + term
    if self.bias is not None:
        y = y + self.bias.view(1, -1, 1, 1)
    return y


def _own_forward(self: nn.Module, x: Tensor) -> Tensor:
    """The layer's own packed forward (its ``kernel_forward``) on the stored signs and scale."""
    return self.kernel_forward(x, _kernels(), self.xnor_weight, self.xnor_scale)


_LINEAR_FORWARDS = {"sign": _sign_linear, "xnor": _xnor_linear, "residual": _residual_linear,
                    "binary_weight": _binary_weight_linear, "own": _own_forward}
_CONV_FORWARDS = {"sign": _sign_conv, "xnor": _xnor_conv, "residual": _residual_conv,
                  "own": _own_forward}
