"""ABC-Net (Lin, Zhao, Pan, NeurIPS 2017).

"Towards Accurate Binary Convolutional Neural Network", arXiv:1711.11294.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bnnbench.methods.base import BinarizationMethod, check_choice, layers_to_binarize, \
    register_method, replace_layers
from bnnbench.nn.layers import QuantConv2d, QuantLinear
from bnnbench.nn.paper_layers import ACTIVATIONS, compose_xnor_block, \
    move_dropout_after_quantizer
from bnnbench.nn.paper_quantizers import ABCActivationQuantizer, ABCWeightQuantizer, check_bits


@register_method
class ABCNet(BinarizationMethod):
    """M binary weight bases and N binary activation bases (Sec. 3.1-3.3).

    Weights (Sec. 3.1): ``W ~ sum_{i=1}^M alpha_i B_i``, ``B_i = sign(W - mean W + u_i std W)``,
    ``u_i = -1 + (i - 1) 2 / (M - 1)`` (``u = 0`` for M = 1), ``alpha`` the least-squares fit to
    ``vec(W)``, recomputed every forward; gradient straight through to W
    (:func:`bnnbench.functional.abc_weight`). Knobs: ``channelwise`` (default false; true fits
    mean, std, bases and alphas per output channel, the paper's channel-wise variant: M floats per
    output channel instead of M per layer); ``alpha_grad`` (default false: ``dL/dW = dL/dW~``;
    true: the paper's Sec. 3.1 chain ``dc/dW = sum_m alpha_m dc/dB_m``, i.e.
    ``dL/dW = (sum_m alpha_m) dL/dW~``, with the STE ``dB_m/dW = 1``).
    Activations (Sec. 3.2): ``A ~ sum_{n=1}^N beta_n H_{v_n}(x)``, ``H_v(x) = 2 1{clip(x + v, 0, 1)
    >= 0.5} - 1``, shifts ``v`` and scales ``beta`` learnable per binary layer; STE slope
    ``1{0 <= x + v <= 1}`` (:func:`bnnbench.functional.abc_activation`). ``activation_bases=null``
    keeps real activations (the paper's "M bases, full-precision activations" rows).
    Because the conv is linear, ``conv(sum beta_n H_n, sum alpha_m B_m)`` equals the paper's sum
    of M x N binary convolutions; training computes it as one conv.

    Block: BN -> ApproxActiv -> ABConv (-> Pool) for every binary layer, fc included, XNOR-Net's
    order, which the paper keeps. ABC-Net released no code, and the paper gives no more of its
    ResNet-18 block than that: we compose it as XNOR-Net's authors' code does
    (allenai/XNOR-Net ``models/alexnetxnor.lua``; :func:`bnnbench.nn.paper_layers.
    compose_xnor_block`): each binary layer reads a BatchNorm of its own through ``activation``
    (default ``identity``: the clip inside ``H_v`` is the nonlinearity), and every other ReLU of
    the host stays: ``BN -> ReLU`` after the full-precision first layer and before the
    full-precision classifier, and on a ResNet the stem's and the one after each residual
    addition (the host's BasicBlock, whose conv1 and downsample get their own BN -> ApproxActiv
    since they read the residual sum). ConvBlock stacks are reordered to ``bn -> act -> conv ->
    pool``; a binary layer without its own BN gets ``BN -> act`` in front. Dropout acts after
    the activation bases (a dropped unit contributes 0, not ``sum_n beta_n H_{v_n}(0)``). First
    and last layers full precision.
    Reproduces: ABC-Net ResNet-18 table ((M, N) = (5, 5): 65.0/85.9 top-1/top-5; M = 5, A32:
    68.3/87.9; the (M, N) grid).
    """

    name = "abcnet"
    paper = "Lin et al. 2017"
    binarizes = "weights (M bases) and activations (N bases)"

    def __init__(self, weight_bases: int = 3, activation_bases: int | None = 3,
                 activation: str = "identity", channelwise: bool = False,
                 alpha_grad: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channelwise = channelwise
        self.alpha_grad = alpha_grad
        self.weight_bases = check_bits("method.weight_bases", weight_bases)
        self.activation_bases = (None if activation_bases is None else
                                 check_bits("method.activation_bases", activation_bases))
        check_choice("method.activation", activation, ACTIVATIONS)
        self.activation = activation

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)
        binary_acts = self.activation_bases is not None

        def make(_: str, layer: nn.Module) -> nn.Module:
            cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
            return cls.from_float(
                layer, weight_quantizer=ABCWeightQuantizer(self.weight_bases, self.channelwise,
                                                           self.alpha_grad),
                input_quantizer=(ABCActivationQuantizer(self.activation_bases)
                                 if binary_acts else None))

        replace_layers(model, names, make)
        if binary_acts:
            compose_xnor_block(model, names, self.activation)
            move_dropout_after_quantizer(model)
        return model
