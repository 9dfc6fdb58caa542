"""XNOR-Net++ (Bulat and Tzimiropoulos, BMVC 2019).

"XNOR-Net++: Improved Binary Neural Networks", arXiv:1909.13863. No authors' code was released;
the block is XNOR-Net's (:class:`bnnbench.methods.xnor.XnorNet`), which the paper modifies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnnbench.errors import BnnbenchError
from bnnbench.methods.base import check_choice, layers_to_binarize, register_method, \
    replace_layers
from bnnbench.methods.xnor import _XnorBase
from bnnbench.models.registry import INPUT_SHAPE_ATTR
from bnnbench.nn.modern_layers import GammaConv2d, GammaLinear
from bnnbench.nn.paper_layers import compose_xnor_block, move_dropout_after_quantizer
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
    Block: XNOR-Net's, as :class:`~bnnbench.methods.xnor.XnorNet` composes it after
    alexnetxnor.lua (:func:`bnnbench.nn.paper_layers.compose_xnor_block`): BN -> sign -> conv ->
    pool for every binary layer, each with a BatchNorm of its own; ``activation`` (default
    identity, relu rejected) only between that BN and the sign; the host's other ReLUs stay
    (BN -> ReLU after the real first layer and before the real classifier, a ResNet's stem and
    residual ReLUs). First and last layers real.
    Deployed: sign weights (1 bit) plus ``o + h_out + w_out`` floats per conv: the packed
    kernels compute the sign x sign product, ``Gamma`` scales it.
    Reproduces: ResNet-18 ImageNet 57.1 / 79.9 top-1/top-5 (alpha x beta x gamma, Table 2).
    """

    name = "xnorpp"
    paper = "Bulat and Tzimiropoulos 2019"
    binarizes = "weights (sign) and activations (sign), learned output scale Gamma"

    def __init__(self, scales: str = "factorized", activation: str = "identity",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("method.scales", scales, SCALES)
        self.check_activation(activation, "XNOR-Net++", "XNOR-Net's block")
        self.scales = scales
        self.activation = activation

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

        replace_layers(model, names, make)
        compose_xnor_block(model, names, self.activation)
        move_dropout_after_quantizer(model)
        return model
