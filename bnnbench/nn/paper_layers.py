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

# between a BatchNorm and the layer that reads it: what may sit there without changing which
# value the layer binarizes (the method's activation, a dropout placeholder, a host activation)
_PASS_TYPES = (*_ACT_TYPES, nn.Dropout)


def _weight_layer(module: nn.Module | None) -> nn.Module | None:
    """The Conv2d/Linear a module is, or wraps (``prepend_input_norm``'s ``norm -> act ->
    layer``), else None."""
    if isinstance(module, _WEIGHT_TYPES):
        return module
    if isinstance(module, nn.Sequential) and isinstance(getattr(module, "layer", None),
                                                        _WEIGHT_TYPES):
        return module.layer
    return None


def _is_full_precision(module: nn.Module | None) -> bool:
    layer = _weight_layer(module)
    return layer is not None and not is_quantized(layer)


def block_input_norm(model: nn.Module, name: str) -> tuple[nn.Module, list[str]] | None:
    """The BatchNorm that is the binary layer ``name``'s own input BatchNorm, with the names of
    the ``nn.ReLU`` modules between the two; None when the layer has none.

    XNOR-Net's block is BN -> BinActiv -> BinConv (alexnetxnor.lua's ``BinConvolution``): the
    value a binary layer binarizes is a BatchNorm's output, and that BatchNorm normalizes a
    *binary* layer's output (or is the block's own). A host's ``layer -> BN -> ReLU`` after a
    full-precision layer is not such a BatchNorm: alexnetxnor.lua keeps conv1 -> BN -> ReLU ->
    MaxPool and gives conv2 a BatchNorm of its own, so it returns None there.
    Recognized: a ConvBlock whose ``bn`` (a BatchNorm) runs before its ``conv`` (its ``act``
    between them, when a ReLU, is listed); an ``nn.Sequential`` where the siblings right before
    the layer are activations or dropout and then a BatchNorm that is the first sibling or
    follows a binary layer (the ``norm -> act -> layer`` wrappers of :func:`prepend_input_norm`,
    mlp's and vgg_small's classifier, AlexNet's fc7); timm-style ``convK`` (K > 1) reading
    ``bn{K-1} -> act{K-1}`` after a binary ``conv{K-1}`` (conv2 of a ResNet block). Anything
    else (a ResNet block's conv1 and downsample, which read the residual sum; a Linear after
    Flatten or pooling; a layer after a full-precision layer's BN -> ReLU) has none.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    prefix = f"{parent_name}." if parent_name else ""
    if isinstance(parent, ConvBlock) and child == "conv":
        order = parent.order
        if not isinstance(parent.bn, _NORM_TYPES) or order.index("bn") > order.index("conv"):
            return None
        act_between = order.index("bn") < order.index("act") < order.index("conv")
        relus = [f"{prefix}act"] if act_between and isinstance(parent.act, nn.ReLU) else []
        return parent.bn, relus
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        relus = []
        for i in range(keys.index(child) - 1, -1, -1):
            module = parent._modules[keys[i]]
            if isinstance(module, _NORM_TYPES):
                producer = parent._modules[keys[i - 1]] if i > 0 else None
                return None if _is_full_precision(producer) else (module, relus)
            if not isinstance(module, _PASS_TYPES):
                return None
            if isinstance(module, nn.ReLU):
                relus.append(f"{prefix}{keys[i]}")
        return None
    match = re.fullmatch(r"conv(\d+)", child)
    if match and int(match.group(1)) > 1:
        k = int(match.group(1)) - 1
        norm = getattr(parent, f"bn{k}", None)
        if not isinstance(norm, _NORM_TYPES) or _is_full_precision(getattr(parent, f"conv{k}",
                                                                           None)):
            return None
        act = getattr(parent, f"act{k}", None)
        return norm, [f"{prefix}act{k}"] if isinstance(act, nn.ReLU) else []
    return None


def drop_affine(norm: nn.Module) -> None:
    """Make a BatchNorm non-affine in place: ``(x - mean) / sqrt(var + eps)``, no gamma/beta.

    XNOR-Net's alexnetxnor.lua builds every SpatialBatchNormalization with ``affine=false``.
    """
    norm.affine = False
    norm.weight = None
    norm.bias = None


def _prepend(model: nn.Module, name: str, activation: nn.Module) -> None:
    """``<name>`` becomes ``nn.Sequential(norm=BN(in), act=activation, layer=<the layer>)``."""
    layer = model.get_submodule(name)
    norm = (nn.BatchNorm2d(layer.in_channels) if isinstance(layer, nn.Conv2d)
            else nn.BatchNorm1d(layer.in_features))
    set_submodule(model, name, nn.Sequential(OrderedDict(norm=norm, act=activation,
                                                         layer=layer)))


def prepend_input_norm(model: nn.Module, names: list[str], activation: str) -> list[str]:
    """Give every named binary layer that has no input BatchNorm of its own
    (:func:`block_input_norm`) a ``BN -> activation`` in front (XNOR-Net's block BNorm ->
    BinActiv -> BinConv for *every* binary layer, fc included: alexnetxnor.lua builds fc6/fc7 as
    BinConvolution, whose first module is a SpatialBatchNormalization over the layer's input).

    The layer at ``name`` becomes ``nn.Sequential(norm=BN(in), act=..., layer=<binary layer>)``;
    its binary layer is then at ``<name>.layer``. A Linear gets ``BatchNorm1d(in_features)``
    (one mean/var per input feature; the authors' fc6 is a 6x6 conv with one per input channel).
    Returns the names wrapped.
    """
    wrapped = [name for name in names if block_input_norm(model, name) is None]
    for name in wrapped:
        layer = model.get_submodule(name)
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        _prepend(model, name, make_activation(activation, channels))
    return wrapped


def _reads_binary_output(model: nn.Module, name: str) -> bool:
    """Whether the layer at ``name`` reads a binary layer's output with no BatchNorm in between
    (through dropout, activations, pooling or Flatten; a ConvBlock's conv through its block's
    predecessor when nothing runs before it in its own block)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, ConvBlock) and child == "conv":
        before = parent.order[:parent.order.index("conv")]
        if not parent_name or any(getattr(parent, slot) is not None
                                  for slot in before if slot != "pool"):
            return False
        parent_name, _, child = parent_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return False
    keys = list(parent._modules)
    for key in reversed(keys[:keys.index(child)]):
        module = parent._modules[key]
        if isinstance(module, ConvBlock):
            after = module.order[module.order.index("conv") + 1:]
            return is_quantized(module.conv) and not any(
                isinstance(getattr(module, slot), _NORM_TYPES) for slot in after)
        layer = _weight_layer(module)
        if layer is not None:
            return is_quantized(layer)
        if not isinstance(module, (*_PASS_TYPES, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d,
                                   nn.AdaptiveAvgPool2d)):
            return False
    return False


def compose_xnor_block(model: nn.Module, names: list[str], activation: str) -> None:
    """Arrange a converted host into XNOR-Net's blocks, in place (``names``: its binary layers).

    alexnetxnor.lua (allenai/XNOR-Net ``models/alexnetxnor.lua``)::

        conv1 -> BN -> ReLU -> MaxPool                       (full precision)
        [BN -> BinActiveZ -> BinConv (-> MaxPool)] x 6      (conv2..conv5, fc6, fc7)
        BN -> ReLU -> conv (the classifier, full precision)

    Only the value between a binary layer's input BatchNorm and its sign gets ``activation``
    (identity by default: BN -> ReLU -> sign is +1 everywhere); every other ReLU of the host
    stays a ReLU. Steps: ConvBlocks with a binary conv are reordered to ``bn -> act -> conv ->
    pool`` (:func:`set_xnor_order`); each binary layer's own input BatchNorm
    (:func:`block_input_norm`) keeps it and the ReLUs between the two become ``activation``; a
    binary layer without one gets ``BN -> activation`` in front (:func:`prepend_input_norm`), so
    a full-precision layer's ``BN -> ReLU`` (fp_first's output; a ResNet's stem) stays and the
    binary layer after it normalizes that again, as conv2 after conv1's ReLU and MaxPool in
    alexnetxnor.lua. A full-precision layer that would read a binary layer's raw output (NIN's
    cccp8 after the binary cccp7 block) gets ``BN -> ReLU`` in front, as the lua's classifier:
    in an empty ``bn``/``act`` slot of its ConvBlock, else as a ``norm -> act -> layer`` wrapper.
    (XNOR-Net's PyTorch port, jiecaoyu/XNOR-Net-PyTorch ``models/alexnet.py``, adds a ReLU after
    every binary conv and reads BN -> Dropout into its classifier; the authors' Torch code is
    followed here.)
    """
    set_xnor_order(model)
    own = []
    for name in names:
        found = block_input_norm(model, name)
        if found is None:
            own.append(name)
            continue
        norm, relus = found
        for relu in relus:
            set_submodule(model, relu, make_activation(activation, norm.num_features))
    prepend_input_norm(model, own, activation)
    for name, layer in list(model.named_modules()):
        if (isinstance(layer, _WEIGHT_TYPES) and not is_quantized(layer)
                and _reads_binary_output(model, name)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, ConvBlock) and parent.bn is None and parent.act is None:
                parent.bn, parent.act = nn.BatchNorm2d(layer.in_channels), nn.ReLU()
                parent.set_order(("bn", "act", "conv", "pool"))
            else:
                _prepend(model, name, nn.ReLU())


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
