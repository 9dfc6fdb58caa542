"""Layers and block surgery the papers need beyond :mod:`bnnbench.nn.layers`.

* :class:`XnorConv2d` / :class:`XnorLinear`: XNOR-Net's activation scale ``K`` on top of a
  quantized layer (Rastegari et al. 2016, Sec. 3.2).
* :class:`GradQuantConv2d` / :class:`GradQuantLinear`: DoReFa's k-bit *gradient* quantization of
  a layer's output (Zhou et al. 2016, Sec. 2.5).
* :class:`Scale`: Tang et al.'s scale layer, one learnable scalar after a binary last layer.
* :func:`replace_relus`, :func:`activation_before_norm`, :func:`set_xnor_order`: swap or move
  the activations of a host architecture (any model made of Conv2d/Linear/BatchNorm/ReLU, timm
  ResNets, and :class:`~bnnbench.nn.blocks.ConvBlock` stacks) into a paper's block order.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnnbench import functional as BF
from bnnbench.errors import BnnbenchError
from bnnbench.nn.blocks import XNOR_ORDER, ConvBlock
from bnnbench.nn.layers import QuantConv2d, QuantLinear, is_quantized, set_submodule

# ------------------------------------------------------------------------------------- XNOR-Net


class XnorConv2d(QuantConv2d):
    """``y = (conv(sign(x), alpha sign(W)) * K) + b`` with XNOR-Net's activation scale ``K``.

    ``K = box_{kh x kw}(mean_c |x|)`` with the conv's stride and padding
    (:func:`bnnbench.functional.xnor_activation_scale`), shape ``(N, 1, H', W')``; computed from
    the real input, before the input quantizer. ``activation_scale=False`` drops ``K`` (the
    authors' released code does). Gradients flow through ``K`` by autograd.
    """

    def __init__(self, *args, activation_scale: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation_scale = activation_scale
        if activation_scale and self.dilation != (1, 1):
            raise BnnbenchError("XNOR activation scale K supports dilation 1 only; "
                                "set method.activation_scale=false for dilated convs")

    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(self.input_quantizer(x), self.quantized_weight(), None)
        if self.activation_scale:
            y = y * BF.xnor_activation_scale(x, self.kernel_size, self.stride, self.padding)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation_scale={self.activation_scale}"


class XnorLinear(QuantLinear):
    """``y = (sign(x) @ (alpha sign(W)).T) * K + b``, ``K = mean |x|`` over the features.

    For a fully connected layer XNOR-Net's box filter covers the whole input: one scalar per
    sample. ``activation_scale=False`` drops it.
    """

    def __init__(self, *args, activation_scale: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation_scale = activation_scale

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.linear(self.input_quantizer(x), self.quantized_weight())
        if self.activation_scale:
            y = y * x.abs().mean(dim=-1, keepdim=True)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation_scale={self.activation_scale}"


# ------------------------------------------------------------------------------------- DoReFa


class _GradQuantMixin:
    """Quantize the gradient arriving at the layer's output (put before the layer class)."""

    grad_bits: int

    def __init__(self, *args, grad_bits: int = 32, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grad_bits = grad_bits

    def forward(self, x: Tensor) -> Tensor:
        return self._quantize_output_grad(super().forward(x))  # type: ignore[misc]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", grad_bits={self.grad_bits}"  # type: ignore[misc]

    def _quantize_output_grad(self, y: Tensor) -> Tensor:
        return BF.dorefa_gradient(y, self.grad_bits) if self.training else y  # type: ignore[attr-defined]


class GradQuantConv2d(_GradQuantMixin, QuantConv2d):
    """A quantized conv whose output gradient is quantized to ``grad_bits`` (DoReFa's ``fg``).

    Forward: as :class:`~bnnbench.nn.layers.QuantConv2d`. Backward: the gradient arriving at
    the output passes through :func:`bnnbench.functional.dorefa_gradient` (per-sample max,
    uniform noise) before reaching the weights and the input. ``grad_bits >= 32``: no-op.
    """


class GradQuantLinear(_GradQuantMixin, QuantLinear):
    """A quantized linear layer whose output gradient is quantized (see ``GradQuantConv2d``)."""


# ------------------------------------------------------------------------------------- Tang


class Scale(nn.Module):
    """``y = s * x`` with one learnable scalar ``s`` (Tang et al. 2017, "scale layer", init 0.001).

    Placed after a binary last layer, whose outputs range over [-N, N] (N = fan-in), so the
    softmax does not start saturated.
    """

    def __init__(self, init: float = 1e-3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"init={self.scale.item():.3g}"


# ------------------------------------------------------------------------------------- activations

ACTIVATIONS = ("identity", "htanh", "relu", "prelu")
_ACT_TYPES = (nn.ReLU, nn.PReLU, nn.Hardtanh, nn.LeakyReLU, nn.Identity)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


def make_activation(name: str, channels: int | None = None) -> nn.Module:
    """``identity``, ``htanh`` (BinaryNet's hard tanh), ``relu`` or channel-wise ``prelu``.

    ``prelu`` has one slope per channel (Caffe's default, init 0.25) when ``channels`` is known,
    else one shared slope. Activations are never in-place (a moved activation may be followed by
    an in-place residual add).
    """
    if name == "identity":
        return nn.Identity()
    if name == "htanh":
        return nn.Hardtanh()
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(num_parameters=channels or 1)
    raise BnnbenchError(f"method.activation={name!r} is not valid; choose one of: "
                        f"{', '.join(ACTIVATIONS)}")


def _channels(module: nn.Module) -> int | None:
    for attr in ("num_features", "out_channels", "out_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def replace_relus(model: nn.Module, name: str,
                  make: Callable[[str, int | None], nn.Module] = make_activation) -> int:
    """Replace every ``nn.ReLU`` by ``make(name, channels)``, in place; returns how many.

    ``channels`` is read from the closest preceding BatchNorm/Conv/Linear in registration order
    (the order the host models define their layers: conv -> bn -> act).
    """
    last: int | None = None
    targets: list[tuple[str, int | None]] = []
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            targets.append((mod_name, last))
        elif isinstance(module, (*_NORM_TYPES, nn.Conv2d, nn.Linear)):
            last = _channels(module)
    for mod_name, channels in targets:
        set_submodule(model, mod_name, make(name, channels))
    return len(targets)


def activation_before_norm(model: nn.Module) -> int:
    """Move each activation that directly follows a BatchNorm in front of it; returns how many.

    Tang et al. (Algorithm 1) compute ``conv -> PReLU -> BatchNorm -> binarize``; host models
    define ``conv -> BatchNorm -> act``. Rules: adjacent ``(norm, act)`` pairs in an
    ``nn.Sequential``; ``bnK``/``actK`` attribute pairs (timm ResNets: stem ``bn1/act1``, blocks
    ``bn1/act1`` and ``bn2/act2``, where the BatchNorm then follows the residual add); ``ConvBlock``
    orders with ``bn`` right before ``act``. The BatchNorm keeps its channel count (activations
    preserve shape).
    """
    swaps = 0
    for module in list(model.modules()):
        if isinstance(module, ConvBlock):
            order = list(module.order)
            for i in range(len(order) - 1):
                if order[i] == "bn" and order[i + 1] == "act":
                    order[i], order[i + 1] = "act", "bn"
                    module.order = tuple(order)
                    swaps += 1
                    break
        elif isinstance(module, nn.Sequential):
            keys = list(module._modules)
            i = 0
            while i < len(keys) - 1:
                a, b = module._modules[keys[i]], module._modules[keys[i + 1]]
                if isinstance(a, _NORM_TYPES) and isinstance(b, _ACT_TYPES):
                    module._modules[keys[i]], module._modules[keys[i + 1]] = b, a
                    swaps += 1
                    i += 2
                else:
                    i += 1
        else:
            for child_name, child in list(module.named_children()):
                match = re.fullmatch(r"bn(\d*)", child_name)
                act = module._modules.get(f"act{match.group(1)}") if match else None
                if match and isinstance(child, _NORM_TYPES) and isinstance(act, _ACT_TYPES):
                    module._modules[child_name] = act
                    module._modules[f"act{match.group(1)}"] = child
                    swaps += 1
    return swaps


def set_xnor_order(model: nn.Module) -> int:
    """Put every ConvBlock whose conv is quantized into XNOR-Net's ``bn -> act -> conv -> pool``.

    (Rastegari et al. 2016, Fig. 3: BNorm -> BinActiv -> BinConv -> Pool; the block's ``act`` must
    then be one whose output the input quantizer can binarize: identity or htanh, not ReLU.)
    Returns the number of blocks reordered. Host models without ConvBlocks are left as they are:
    there the next layer's input quantizer already binarizes the BatchNorm's output.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, ConvBlock) and is_quantized(module.conv):
            module.set_order(XNOR_ORDER)
            count += 1
    return count
