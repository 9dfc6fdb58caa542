"""Bi-Real Net (Liu, Wu, Luo, Yang, Liu, Cheng, ECCV 2018), and the unit surgery ReActNet reuses.

"Bi-Real Net: Enhancing the Performance of 1-bit CNNs with Improved Representational Capability
and Advanced Training Algorithm", arXiv:1808.00278. Authors' code: github.com/liuzechun/
Bi-Real-net (``pytorch_implementation/BiReal18_34/birealnet.py``; Caffe in
``caffe_implementation``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import nn

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.methods.base import (
    BinarizationMethod,
    check_choice,
    first_and_last,
    layers_to_binarize,
    mark_moved,
    register_method,
    replace_activations,
    replace_layers,
)
from bnnbench.nn.blocks import ConvBlock
from bnnbench.nn.layers import QuantConv2d, QuantLinear, set_submodule
from bnnbench.nn.modern_layers import (
    WEIGHT_GRADIENTS,
    ApproxSignQuantizer,
    BinaryUnit,
    BiRealBlock,
    MagnitudeSignQuantizer,
    ReActNetABlock,
    SignConv2d,
    SignLinear,
)
from bnnbench.nn.paper_layers import move_dropout_after_quantizer

ModuleFactory = Callable[[int], nn.Module | None]
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def _none(_: int) -> None:
    return None


def _or_identity(module: nn.Module | None) -> nn.Module:
    return nn.Identity() if module is None else module


# ------------------------------------------------------------------------------------- surgery
def unit_shortcut(layer: nn.Module) -> nn.Module | None:
    """The real-valued shortcut around a layer whose output has its input's shape, else None.

    Linear: ``in == out`` -> identity. Conv2d: ``in == out`` channels, dilation 1, "same" padding
    (``(k - 1) / 2`` per odd kernel dim) -> identity at stride 1, ``AvgPool2d(s, s,
    ceil_mode=True)`` at stride ``s`` (the pooled shortcut of ReActNet's MobileNet blocks; ceil
    mode gives the conv's ``ceil(H / s)`` on odd sizes too). Anything else: no shortcut.
    """
    if isinstance(layer, nn.Linear):
        return nn.Identity() if layer.in_features == layer.out_features else None
    if not isinstance(layer, nn.Conv2d) or layer.in_channels != layer.out_channels:
        return None
    same = all(k % 2 == 1 and p == (k - 1) // 2
               for k, p in zip(layer.kernel_size, layer.padding)) \
        and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
    if not same or layer.stride[0] != layer.stride[1]:
        return None
    s = layer.stride[0]
    return nn.Identity() if s == 1 else nn.AvgPool2d(s, s, ceil_mode=True)


def pooled_downsample(downsample: nn.Module) -> nn.Module:
    """The authors' downsample ``AvgPool2d(2, stride) -> 1x1 conv (stride 1) -> BN`` from a
    host's ``1x1 conv (stride s) -> BN``, weights kept (keys ``0``/``1`` kept; the pool is
    ``pool``). ``ceil_mode=True``: equal to the strided conv's ``ceil(H / s)`` on odd sizes
    (ImageNet's are even, where it changes nothing)."""
    if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2
            and isinstance(downsample[0], nn.Conv2d) and downsample[0].kernel_size == (1, 1)):
        return downsample
    conv = downsample[0]
    stride = conv.stride[0]
    if stride == 1:
        return downsample
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.data.copy_(conv.weight.data)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.data)
    return nn.Sequential(OrderedDict([("pool", nn.AvgPool2d(stride, stride, ceil_mode=True)),
                                      ("0", new), ("1", downsample[1])]))


def basic_blocks(model: nn.Module, units: str) -> list[tuple[str, nn.Module]]:
    """Every timm/torchvision ``BasicBlock`` of ``model`` with its name, for a method that
    rebuilds each as ``units`` (named in the one-line refusals): Bottleneck blocks (ResNet-50
    and up) and blocks with attention or anti-aliasing have no such form and are refused."""
    blocks = []
    for name, module in list(model.named_modules()):
        kind = type(module).__name__
        if kind == "Bottleneck":
            raise BnnbenchError(f"{units} are built for BasicBlock ResNets; use "
                                "model=resnet18 or model=resnet34")
        if kind != "BasicBlock" or not all(hasattr(module, a) for a in
                                           ("conv1", "bn1", "conv2", "bn2")):
            continue
        if getattr(module, "se", None) is not None or not isinstance(
                getattr(module, "aa", nn.Identity()), nn.Identity):
            raise BnnbenchError(f"{name}: a BasicBlock with attention or anti-aliasing has no "
                                f"form as {units}; use model=resnet18 or model=resnet34")
        blocks.append((name, module))
    return blocks


def rebuild_resnet_blocks(model: nn.Module, make_shift: ModuleFactory, make_act: ModuleFactory,
                          avgpool_downsample: bool) -> list[str]:
    """Turn every timm/torchvision ``BasicBlock`` into a :class:`BiRealBlock`; returns the names
    of the convs now inside one (:func:`basic_blocks` refuses the others)."""
    inside = []
    for name, module in basic_blocks(model, "Bi-Real/ReActNet units"):
        down = getattr(module, "downsample", None)
        if down is not None and avgpool_downsample:
            down = pooled_downsample(down)
        c1, c2 = module.conv1, module.conv2
        block = BiRealBlock(c1, module.bn1, c2, module.bn2, down,
                            shift1=make_shift(c1.in_channels), act1=make_act(c1.out_channels),
                            shift2=make_shift(c2.in_channels), act2=make_act(c2.out_channels))
        set_submodule(model, name, block)
        prefix = f"{name}." if name else ""
        inside += [f"{prefix}conv1", f"{prefix}conv2"]
    return inside


def fill_reactnet_a_blocks(model: nn.Module, make_shift: ModuleFactory,
                           make_act: ModuleFactory) -> list[str]:
    """Give every :class:`ReActNetABlock` (``model=reactnet_a``) the method's shifts and
    activations (identities where the method has none: the host's ReLUs go); returns the names
    of its two convs, which already have their real shortcuts."""
    inside = []
    for name, block in model.named_modules():
        if not isinstance(block, ReActNetABlock):
            continue
        c_in, c_out = block.conv.in_channels, block.pointwise.out_channels
        block.shift1 = _or_identity(make_shift(c_in))
        block.act1 = _or_identity(make_act(c_in))
        block.shift2 = _or_identity(make_shift(c_in))
        block.act2 = _or_identity(make_act(c_out))
        prefix = f"{name}." if name else ""
        inside += [f"{prefix}conv", f"{prefix}pointwise"]
    return inside


def wrap_units(model: nn.Module, names: list[str], make_shift: ModuleFactory,
               make_act: ModuleFactory) -> list[str]:
    """Wrap each named layer with the BatchNorm right after it into a :class:`BinaryUnit`
    (``norm(layer(shift(x))) + shortcut(x)`` then ``act``); the layer moves to
    ``<name>.layer``. The BatchNorm is the next sibling in an ``nn.Sequential`` or a
    ConvBlock's ``bn`` right after its ``conv``; it leaves its old place, which it keeps as its
    host name (:func:`~bnnbench.methods.base.mark_moved`: a warm start from the host copies it).
    Returns the names."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = model.get_submodule(name)
        norm = None
        if isinstance(parent, ConvBlock) and child == "conv":
            order = [k for k in parent.order if getattr(parent, k) is not None]
            if parent.bn is not None and order.index("conv") + 1 < len(order) and \
                    order[order.index("conv") + 1] == "bn":
                norm, parent.bn = parent.bn, None
                mark_moved(norm, f"{parent_name}.bn" if parent_name else "bn")
        elif isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            after = keys.index(child) + 1
            if after < len(keys) and isinstance(parent._modules[keys[after]], _NORMS):
                norm = parent._modules[keys[after]]
                parent._modules[keys[after]] = nn.Identity()
                mark_moved(norm, f"{parent_name}.{keys[after]}" if parent_name else keys[after])
        conv = isinstance(layer, nn.Conv2d)
        c_in = layer.in_channels if conv else layer.in_features
        c_out = layer.out_channels if conv else layer.out_features
        set_submodule(model, name, BinaryUnit(layer, norm, unit_shortcut(layer),
                                              make_shift(c_in), make_act(c_out)))
    return names


def convert_to_units(model: nn.Module, names: list[str], first: str,
                     make_layer: Callable[[str, nn.Module], nn.Module], make_shift: ModuleFactory,
                     make_act: ModuleFactory, avgpool_downsample: bool) -> nn.Module:
    """Bi-Real/ReActNet surgery: ResNet BasicBlocks become two units each, ReActNet-A blocks
    get the method's shifts and activations, every other binary layer with binary inputs its
    own unit, the host's ReLUs go (sign or RPReLU follows), the
    host's Dropout moves after the next binary layer's sign."""
    inside = set(rebuild_resnet_blocks(model, make_shift, make_act, avgpool_downsample))
    inside |= set(fill_reactnet_a_blocks(model, make_shift, make_act))
    replace_layers(model, names, make_layer)
    wrap_units(model, [n for n in names if n not in inside and n != first], make_shift, make_act)
    replace_activations(model, (nn.ReLU,), lambda _: nn.Identity())
    move_dropout_after_quantizer(model)
    return model


def sign_layer(layer: nn.Module, *, reads_image: bool, weight_gradient: str,
               binary_weights: bool = True, latent_clip: float | None = None) -> nn.Module:
    """A Bi-Real/ReActNet binary layer: ApproxSign inputs (real for the layer that reads the
    image), magnitude-aware sign weights (real with ``binary_weights=False``)."""
    conv = isinstance(layer, nn.Conv2d)
    if reads_image or not binary_weights:
        cls: Any = QuantConv2d if conv else QuantLinear
    else:
        cls = SignConv2d if conv else SignLinear
    return cls.from_float(
        layer,
        weight_quantizer=MagnitudeSignQuantizer(weight_gradient) if binary_weights else None,
        input_quantizer=None if reads_image else ApproxSignQuantizer(),
        latent_clip=latent_clip)


class _UnitMethod(BinarizationMethod):
    """Shared knobs of Bi-Real Net and ReActNet, ``binary_weights`` among them: ``False`` is
    stage 1 of the two-stage recipe (binary activations, real weights)."""

    default_gradient = "paper"

    def __init__(self, weight_gradient: str | None = None, avgpool_downsample: bool = True,
                 latent_clip: float | None = None, fp_shortcut: bool = True,
                 binary_weights: bool = True, **kwargs: Any) -> None:
        super().__init__(fp_shortcut=fp_shortcut, **kwargs)
        weight_gradient = weight_gradient or self.default_gradient
        check_choice("method.weight_gradient", weight_gradient, WEIGHT_GRADIENTS)
        if latent_clip is not None:
            check_range("method.latent_clip", latent_clip, low=0, low_inclusive=False)
        self.weight_gradient = weight_gradient
        self.avgpool_downsample = avgpool_downsample
        self.latent_clip = latent_clip
        self.binary_weights = binary_weights

    def _convert(self, model: nn.Module, make_shift: ModuleFactory,
                 make_act: ModuleFactory) -> nn.Module:
        first, _ = first_and_last(model)
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)
        return convert_to_units(
            model, names, first,
            lambda name, layer: sign_layer(layer, reads_image=name == first,
                                           weight_gradient=self.weight_gradient,
                                           binary_weights=self.binary_weights,
                                           latent_clip=self.latent_clip),
            make_shift, make_act, self.avgpool_downsample)


@register_method
class BiRealNet(_UnitMethod):
    """Bi-Real Net: a real-valued shortcut around every 1-bit conv, ApproxSign, magnitude-aware
    weights (Liu et al. 2018).

    Unit (Fig. 1; the authors' ``BasicBlock``): ``y = BN(conv(sign(x), W_b)) + x``; no ReLU
    anywhere (the host's ReLUs, the stem's included, become identities as in the authors'
    network). On ResNet hosts every BasicBlock becomes two units (Bi-Real-18 / -34 are
    ``model=resnet18`` / ``resnet34``: 16 / 32 one-conv blocks); the block's downsample is the
    first unit's shortcut, rebuilt as the authors' ``AvgPool2d(2) -> 1x1 conv -> BN``
    (``avgpool_downsample=false`` keeps the host's strided 1x1 conv) and kept real
    (``fp_shortcut``). Other hosts: each binary layer with binary inputs becomes a unit with the
    BatchNorm after it; the shortcut is the identity where the layer keeps its input's shape
    (an ``AvgPool2d(s)`` for a strided conv), absent where it changes it.
    Activations: ``sign`` forward, ApproxSign backward ``g * max(0, 2 - 2|x|)``
    (:func:`bnnbench.nn.modern_layers.approx_sign`, Eq. 6).
    Weights: ``alpha_o sign(W)``, ``alpha_o = mean|W_o|`` (Sec. 3.3); backward
    ``weight_gradient=paper`` ``g * alpha_o * 1{|W| < 1}`` (the magnitude-aware gradient) or
    ``code`` ``g * 1{|W| <= 1}`` (the authors' PyTorch ``HardBinaryConv``)
    (:func:`bnnbench.nn.modern_layers.magnitude_sign`). No latent clip (the authors' code has
    none; ``latent_clip`` adds one). First and last layers real.
    Paper's recipe: initialise from a real-valued net trained with clip(-1, 1) in place of ReLU
    (the ``init`` recipe, not part of this method; ``+recipe=fp_init`` trains both in one
    command, its first stage with clip); Adam, lr 1e-3 (authors' code), batch 512.
    ``binary_weights=false`` is stage 1 of the two-stage recipe (``+recipe=two_stage``): the
    same units with real weights, ``y = BN(conv(sign(x), W)) + x`` with ApproxSign's gradient
    for the activations and the plain gradient ``dL/dW`` for ``W`` (no ``alpha``, no mask):
    Real-to-Binary's stage 1 ("binary activations, real weights", Martinez et al. 2020, the
    two-stage training of its strong baseline) and ReActNet's step 1 (Sec. 4.1) on Bi-Real's
    units. Stage 2 (``true``) starts from stage 1's weights (``init=``). Bi-Real's own paper
    starts from a real network with real activations instead, the ``fp_init`` recipe.
    Reproduces: Bi-Real-18 56.4 / 79.5, Bi-Real-34 62.2 / 83.9 ImageNet top-1/top-5 (Table 4).
    """

    name = "bireal"
    paper = "Liu et al. 2018"
    binarizes = "weights (sign x per-filter mean|W|) and activations (sign, ApproxSign grad)"

    def convert(self, model: nn.Module) -> nn.Module:
        return self._convert(model, _none, _none)
