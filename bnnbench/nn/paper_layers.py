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
from collections import OrderedDict
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
        y = self._conv_forward(self.quantized_input(x), self.quantized_weight(), None)
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
        y = nn.functional.linear(self.quantized_input(x), self.quantized_weight())
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


# ------------------------------------------------------------------------------------- dropout

_WEIGHT_TYPES = (nn.Conv2d, nn.Linear)


def move_dropout_after_quantizer(model: nn.Module) -> int:
    """Move each Dropout that feeds a layer with quantized inputs into that layer's
    ``input_dropout`` slot (after its input quantizer); returns how many moved.

    The authors' order is BN -> binarize -> Dropout -> next layer (BinaryNet's Theano/Torch code;
    XNOR-Net's PyTorch port: BN -> BinActive -> Dropout -> Conv): a dropped unit contributes 0.
    Dropout in front of the quantizer would hand it a 0, which ``sign(0) = +1`` (BinaryNet,
    XNOR-Net), Tang's residual binarization (``alpha_1 - alpha_2``) or ABC-Net's ``H_v`` turn
    into a non-zero value. "Feeds" is registration order (the order the host models define their
    layers): the next Conv2d/Linear registered after the Dropout. A Dropout before a layer with
    real inputs stays where it is; the moved one is replaced by ``nn.Identity``.
    """
    modules = list(model.named_modules())
    moves: list[tuple[str, nn.Dropout, nn.Module]] = []
    for i, (name, module) in enumerate(modules):
        if type(module) is not nn.Dropout:
            continue
        consumer = next((m for _, m in modules[i + 1:] if isinstance(m, _WEIGHT_TYPES)), None)
        if (isinstance(consumer, (QuantConv2d, QuantLinear))
                and consumer.input_bits < 32 and isinstance(consumer.input_dropout, nn.Identity)):
            moves.append((name, module, consumer))
    for name, dropout, consumer in moves:
        consumer.input_dropout = dropout
        set_submodule(model, name, nn.Identity())
    return len(moves)


# ------------------------------------------------------------------------------------- XNOR block

def input_norm(model: nn.Module, name: str) -> nn.Module | None:
    """The BatchNorm whose output the layer at ``name`` reads (through activations, dropout or
    pooling), or None.

    Recognized: a ConvBlock whose ``bn`` runs before its ``conv``; an ``nn.Sequential`` where the
    closest preceding sibling that is not an activation, dropout or pooling is a BatchNorm (this
    covers the ``norm -> act -> layer`` wrappers of :func:`prepend_input_norm`); timm-style
    ``convK`` (K > 1) with a sibling ``bn{K-1}`` (conv2 of a ResNet block reads bn1 -> act1).
    Anything else (a ResNet block's conv1 and downsample, which read the residual sum; a Linear
    after Flatten) has none.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, ConvBlock) and child == "conv":
        if parent.bn is not None and parent.order.index("bn") < parent.order.index("conv"):
            return parent.bn
        return None
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        for key in reversed(keys[:keys.index(child)]):
            module = parent._modules[key]
            if isinstance(module, _NORM_TYPES):
                return module
            if not isinstance(module, (*_ACT_TYPES, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d)):
                return None
        return None
    match = re.fullmatch(r"conv(\d+)", child)
    if match and int(match.group(1)) > 1:
        norm = getattr(parent, f"bn{int(match.group(1)) - 1}", None)
        return norm if isinstance(norm, _NORM_TYPES) else None
    return None


def drop_affine(norm: nn.Module) -> None:
    """Make a BatchNorm non-affine in place: ``(x - mean) / sqrt(var + eps)``, no gamma/beta.

    XNOR-Net's alexnetxnor.lua builds every SpatialBatchNormalization with ``affine=false``.
    """
    norm.affine = False
    norm.weight = None
    norm.bias = None


def prepend_input_norm(model: nn.Module, names: list[str], activation: str) -> list[str]:
    """Give every named binary layer that does not read a BatchNorm's output its own
    ``BN -> activation`` in front (XNOR-Net's block BNorm -> BinActiv -> BinConv for *every*
    binary layer, fc included: alexnetxnor.lua builds fc6/fc7 as BinConvolution, whose first
    module is a SpatialBatchNormalization over the layer's input).

    The layer at ``name`` becomes ``nn.Sequential(norm=BN(in), act=..., layer=<binary layer>)``;
    its binary layer is then at ``<name>.layer``. A Linear gets ``BatchNorm1d(in_features)``
    (one mean/var per input feature; the authors' fc6 is a 6x6 conv with one per input channel).
    Returns the names wrapped.
    """
    wrapped = []
    for name in names:
        if input_norm(model, name) is not None:
            continue
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Conv2d):
            norm: nn.Module = nn.BatchNorm2d(layer.in_channels)
            channels = layer.in_channels
        else:
            norm = nn.BatchNorm1d(layer.in_features)
            channels = layer.in_features
        set_submodule(model, name, nn.Sequential(OrderedDict(
            norm=norm, act=make_activation(activation, channels), layer=layer)))
        wrapped.append(name)
    return wrapped


# ------------------------------------------------------------------------------------- Tang

def remove_output_norm(model: nn.Module, last: str) -> bool:
    """Remove a BatchNorm that directly follows the last layer (``last``); returns whether one was.

    Tang et al.'s last layer is binary -> scale layer -> softmax: a BatchNorm after it would undo
    the scale (``BN(s z) = BN(z)``), so Table 3's scale-layer rows could not differ. Handled: the
    next sibling in an ``nn.Sequential`` (mlp, vgg_small's classifier) and a ConvBlock's ``bn``
    after its conv. The BatchNorm's shift was the logits' only bias when the layer had none
    (``bias=False`` before an output BN), so a zero-initialized bias is added to such a layer.
    """
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    removed = False
    if isinstance(parent, ConvBlock) and child == "conv" and parent.bn is not None:
        if parent.order.index("bn") > parent.order.index("conv"):
            parent.bn = None
            removed = True
    elif isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        after = keys.index(child) + 1
        if after < len(keys) and isinstance(parent._modules[keys[after]], _NORM_TYPES):
            parent._modules[keys[after]] = nn.Identity()
            removed = True
    layer = model.get_submodule(last)
    if removed and layer.bias is None:
        out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        layer.bias = nn.Parameter(torch.zeros(out, device=layer.weight.device))
    return removed
