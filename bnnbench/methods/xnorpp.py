"""XNOR-Net++ (Bulat and Tzimiropoulos, BMVC 2019).

"XNOR-Net++: Improved Binary Neural Networks", arXiv:1909.13863. No authors' code was released;
the block is the one the same authors build on it in Real-to-Binary (Martinez, Yang, Bulat,
Tzimiropoulos, ICLR 2020, Sec. 4.1, the "strong baseline"; larq zoo's
``larq_zoo/literature/real_to_bin_nets.py``): BN -> sign -> binary conv -> Gamma -> PReLU, with
a real-valued shortcut around every binary conv.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from collections import OrderedDict
from collections.abc import Callable

from bnnbench.errors import BnnbenchError
from bnnbench.methods.base import check_choice, layers_to_binarize, register_method, \
    replace_layers
from bnnbench.methods.bireal import basic_blocks, pooled_downsample, unit_shortcut
from bnnbench.methods.xnor import _XnorBase
from bnnbench.models.registry import INPUT_SHAPE_ATTR
from bnnbench.nn.blocks import ConvBlock
from bnnbench.nn.layers import is_quantized, set_submodule
from bnnbench.nn.modern_layers import ChannelRepeat, GammaConv2d, GammaLinear, PreNormUnit, \
    ReActNetABlock
from bnnbench.nn.paper_layers import ACTIVATIONS, make_activation, \
    move_dropout_after_quantizer
from bnnbench.nn.quantizers import SignQuantizer

SCALES = ("factorized", "channel")


def conv_output_sizes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, int]]:
    """(h_out, w_out) of each named Conv2d for one input of the model's size, by a forward pass
    on zeros (eval mode, no gradient; the meta device works too). The input size is the one
    :func:`bnnbench.models.create_model` records on the models it builds."""
    convs = [n for n in names if isinstance(model.get_submodule(n), nn.Conv2d)]
    if not convs:
        return {}
    shape = getattr(model, INPUT_SHAPE_ATTR, None)
    if shape is None:
        raise BnnbenchError("method.scales=factorized needs the host's input size (its "
                            "beta/gamma have one value per output row/column): build the model "
                            "with bnnbench.models.create_model, or use method.scales=channel")
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: sizes.__setitem__(n, (out.shape[-2], out.shape[-1])))
        for n in convs]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


# ------------------------------------------------------------------------------------- surgery
ActFactory = Callable[[int], nn.Module]
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def prenorm_unit(layer: nn.Module, make_act: ActFactory,
                 shortcut: nn.Module | None) -> PreNormUnit:
    """``act(layer(BN(x))) + shortcut(x)`` around ``layer`` with a new BatchNorm over its input."""
    conv = isinstance(layer, nn.Conv2d)
    c_in = layer.in_channels if conv else layer.in_features
    c_out = layer.out_channels if conv else layer.out_features
    norm = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(c_in, device=layer.weight.device)
    return PreNormUnit(norm, layer, make_act(c_out), shortcut)


def _block_shortcut(down: nn.Module | None, avgpool_downsample: bool,
                    make_act: ActFactory) -> nn.Module:
    """The first unit's shortcut of a BasicBlock: identity, the host's real downsample (pooled
    as the strong baseline's ``AvgPool -> 1x1 conv -> BN`` by default), or, when the downsample
    conv is binary (``fp_shortcut=false``), a unit of its own without activation whose ``Gamma``
    replaces the downsample's BatchNorm (which would cancel it)."""
    if down is None:
        return nn.Identity()
    conv = down[0] if isinstance(down, nn.Sequential) and len(down) else None
    if conv is not None and is_quantized(conv):
        return prenorm_unit(conv, lambda _: nn.Identity(), None)
    return pooled_downsample(down) if avgpool_downsample else down


def prenorm_resnet_blocks(model: nn.Module, make_act: ActFactory,
                          avgpool_downsample: bool) -> list[str]:
    """Rebuild every timm/torchvision ``BasicBlock`` as two :class:`PreNormUnit` (``conv1``,
    ``conv2``; the strong baseline's two half blocks): ``conv1`` adds the block's downsample (or
    ``x``), ``conv2`` its own input. The host's BatchNorms after the convs and its ReLUs go
    (each unit normalizes its own input; PReLU replaces ReLU). Returns the names the two convs
    had (:func:`~bnnbench.methods.bireal.basic_blocks` refuses Bottleneck and attention
    blocks)."""
    inside = []
    for name, module in basic_blocks(model, "XNOR-Net++'s units"):
        shortcut = _block_shortcut(getattr(module, "downsample", None), avgpool_downsample,
                                   make_act)
        block = nn.Sequential(OrderedDict(
            conv1=prenorm_unit(module.conv1, make_act, shortcut),
            conv2=prenorm_unit(module.conv2, make_act, nn.Identity())))
        set_submodule(model, name, block)
        prefix = f"{name}." if name else ""
        inside += [f"{prefix}conv1", f"{prefix}conv2"]
    return inside


def prenorm_reactnet_a_blocks(model: nn.Module, make_act: ActFactory) -> list[str]:
    """Rebuild every :class:`ReActNetABlock` as two units with its parameter-free shortcuts
    (the pooled input, then ``[y1, y1]`` where the 1x1 conv doubles the channels); returns the
    names its two convs had."""
    inside = []
    for name, block in list(model.named_modules()):
        if not isinstance(block, ReActNetABlock):
            continue
        set_submodule(model, name, nn.Sequential(OrderedDict(
            conv=prenorm_unit(block.conv, make_act, block.pool),
            pointwise=prenorm_unit(block.pointwise, make_act, ChannelRepeat(block.copies)))))
        prefix = f"{name}." if name else ""
        inside += [f"{prefix}conv", f"{prefix}pointwise"]
    return inside


def _drop_output_norm_and_relu(model: nn.Module, name: str) -> None:
    """Remove the BatchNorm right after the layer ``name`` and a ReLU right after that (a
    ConvBlock's ``bn``/``act`` after its conv, or the next siblings in an ``nn.Sequential``):
    the unit normalizes its own input and brings its own activation."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, ConvBlock) and child == "conv":
        after = parent.order[parent.order.index("conv") + 1:]
        if "bn" in after and isinstance(parent.bn, _NORMS):
            parent.bn = None
            if "act" in after and isinstance(parent.act, nn.ReLU):
                parent.act = None
    elif isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        i = keys.index(child) + 1
        if i < len(keys) and isinstance(parent._modules[keys[i]], _NORMS):
            parent._modules[keys[i]] = nn.Identity()
            if i + 1 < len(keys) and isinstance(parent._modules[keys[i + 1]], nn.ReLU):
                parent._modules[keys[i + 1]] = nn.Identity()


def prenorm_plain_layers(model: nn.Module, names: list[str], make_act: ActFactory) -> None:
    """Every other binary layer becomes a unit whose shortcut is Bi-Real's on a plain host
    (:func:`bnnbench.methods.bireal.unit_shortcut`: the identity where the layer keeps its
    input's shape, a pooling for a strided conv, none where it changes it); the BatchNorm and
    ReLU the host put after it go, so what follows reads ``act(Gamma z) (+ x)``."""
    for name in names:
        _drop_output_norm_and_relu(model, name)
        layer = model.get_submodule(name)
        set_submodule(model, name, prenorm_unit(layer, make_act, unit_shortcut(layer)))


@register_method
class XnorNetPP(_XnorBase):
    """XNOR-Net++: one learned scale ``Gamma`` per binary layer in place of XNOR-Net's analytic
    ``alpha`` and ``K`` (Bulat and Tzimiropoulos 2019, Sec. 3).

    Forward (Eq. 5): ``Y = (sign(X) (*) sign(W)) . Gamma + b`` with, for ``scales=factorized``
    (the paper's best ResNet-18 result, case 3), ``Gamma = alpha (x) beta (x) gamma``,
    ``alpha`` in R^o, ``beta`` in R^{h_out}, ``gamma`` in R^{w_out}
    (``Gamma_{o,i,j} = alpha_o beta_i gamma_j``); ``scales=channel`` is ``Gamma = alpha`` (case
    4). Fully connected layers: ``Gamma = alpha``. Init ``alpha_o = mean|W_o|``, ``beta = gamma =
    1`` (:class:`bnnbench.nn.modern_layers.GammaConv2d`). ``h_out, w_out`` come from the host's
    input size: on a host built by ``bnnbench.models.create_model`` (every ``model=``).
    Backward: activations STE ``1{|x| <= 1}``; weights ``g`` (BinaryNet's unmasked STE) with the
    latent weights clipped to [-1, 1]; ``Gamma`` exact (autograd).
    Block (:class:`bnnbench.nn.modern_layers.PreNormUnit`): ``y = act(Gamma . (sign(BN(x)) (*)
    sign(W))) + shortcut(x)``, the same authors' strong baseline (Real-to-Binary, Martinez et
    al. 2020, Sec. 4.1, built on XNOR-Net++ with Bi-Real's double skip connections; larq zoo's
    ``StrongBaselineNet``): BatchNorm -> sign -> binary conv -> Gamma -> ``activation``
    (default ``prelu``, per channel, as the strong baseline; ``identity``/``htanh``/``relu``
    the options) -> + shortcut. No BatchNorm between Gamma and the addition: a BatchNorm after
    the layer, as XNOR-Net's block has, cancels any per-channel Gamma (``BN(a z) = BN(z)``).
    ResNet BasicBlocks become two units (the block's real downsample, pooled as
    ``AvgPool -> 1x1 conv -> BN`` unless ``avgpool_downsample=false``, is the first unit's
    shortcut; ``fp_shortcut`` defaults to true as in the strong baseline); ReActNet-A blocks
    keep their parameter-free shortcuts; on a plain host each binary layer gets Bi-Real's
    shortcut (the identity where it keeps the shape, none where it changes it, where its
    per-channel ``alpha`` then only reaches the next unit's BatchNorm through a positively
    homogeneous map and is cancelled in training mode: ``beta``/``gamma`` and the layers with a
    shortcut carry the scale there). The host's ReLUs after binary layers go; the stem's stay.
    First and last layers real; the classifier reads the last unit's output directly.
    Deployed: sign weights (1 bit) plus ``o + h_out + w_out`` floats per conv: the packed
    kernels compute the sign x sign product, ``Gamma`` scales it.
    Reproduces: ResNet-18 ImageNet 57.1 / 79.9 top-1/top-5 (alpha x beta x gamma, Table 2).
    """

    name = "xnorpp"
    paper = "Bulat and Tzimiropoulos 2019"
    binarizes = "weights (sign) and activations (sign), learned output scale Gamma"

    def __init__(self, scales: str = "factorized", activation: str = "prelu",
                 avgpool_downsample: bool = True, fp_shortcut: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(fp_shortcut=fp_shortcut, **kwargs)
        check_choice("method.scales", scales, SCALES)
        check_choice("method.activation", activation, ACTIVATIONS)
        self.scales = scales
        self.activation = activation
        self.avgpool_downsample = avgpool_downsample

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)
        sizes = conv_output_sizes(model, names) if self.scales == "factorized" else {}

        def make(name: str, layer: nn.Module) -> nn.Module:
            kwargs: dict[str, Any] = dict(weight_quantizer=SignQuantizer(cancel=False),
                                          input_quantizer=SignQuantizer(),
                                          latent_clip=self.latent_clip)
            if isinstance(layer, nn.Conv2d):
                new: nn.Module = GammaConv2d.from_float(layer, out_size=sizes.get(name),
                                                        **kwargs)
            else:
                new = GammaLinear.from_float(layer, **kwargs)
            with torch.no_grad():
                new.scale_channel.copy_(layer.weight.abs().flatten(1).mean(1))
            return new

        def make_act(channels: int) -> nn.Module:
            return make_activation(self.activation, channels)

        replace_layers(model, names, make)
        inside = set(prenorm_resnet_blocks(model, make_act, self.avgpool_downsample))
        inside |= set(prenorm_reactnet_a_blocks(model, make_act))
        shortcuts = {n for n in names if "downsample" in n.split(".")}
        prenorm_plain_layers(model, [n for n in names if n not in inside | shortcuts],
                             make_act)
        move_dropout_after_quantizer(model)
        return model
