"""BinaryNet / BNN (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

"Binarized Neural Networks: Training Deep Neural Networks with Weights and Activations
Constrained to +1 or -1", arXiv:1602.02830 (NeurIPS 2016 as "Binarized Neural Networks").
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from bnnbench.methods.base import (
    BinarizationMethod,
    layers_to_binarize,
    register_method,
    replace_activations,
    replace_layers,
)
from bnnbench.nn.layers import QuantConv2d, QuantLinear, quantized_layers
from bnnbench.nn.quantizers import SignQuantizer
from bnnbench.nn.shift import replace_batchnorms


def binary_layer(layer: nn.Module, *, stochastic: bool, binarize_input: bool,
                 latent_clip: float | None = 1.0) -> nn.Module:
    """The BinaryNet version of a Conv2d/Linear: sign weights and (optionally) sign inputs."""
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    return cls.from_float(
        layer,
        weight_quantizer=SignQuantizer(stochastic=stochastic),
        input_quantizer=SignQuantizer(stochastic=stochastic) if binarize_input else None,
        latent_clip=latent_clip,
    )


def glorot_lr_scale(layer: nn.Module) -> float:
    """BinaryNet's per-layer learning-rate scale 1 / sqrt(1.5 / (fan_in + fan_out)).

    The authors' code multiplies each binary layer's learning rate by this Glorot-derived factor
    (with H = 1, the latent-weight clip bound). Conv: fan_in = k_h k_w C_in, fan_out = k_h k_w C_out.
    """
    if isinstance(layer, nn.Conv2d):
        taps = layer.kernel_size[0] * layer.kernel_size[1]
        fan_in, fan_out = taps * layer.in_channels // layer.groups, taps * layer.out_channels
    else:
        fan_in, fan_out = layer.in_features, layer.out_features
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))


@register_method
class BinaryNet(BinarizationMethod):
    """Binary weights and binary activations, trained with latent real weights.

    Forward (Eq. 1; stochastic variant Eq. 2):
        W_b = sign(W),  x_b = sign(x),  sign(0) = +1;
        stochastic: x_b = +1 with probability hard_sigmoid(x) = clip((x + 1) / 2, 0, 1).
        A binary layer computes y = W_b x_b + b.
    Backward (straight-through estimator, Eq. 4, "cancelled" outside [-1, 1]):
        dL/dx = dL/dx_b * 1_{|x| <= 1};  dL/dW = dL/dW_b * 1_{|W| <= 1}.
    Update: latent weights W are clipped to [-1, 1] after every step (Algorithm 1).
    Activations: every ReLU is replaced by Hardtanh (BinaryNet's htanh); because the next layer
    binarizes its input, sign(htanh(x)) = sign(x) and the htanh carries the STE window.
    First and last layers stay full precision by default (``fp_first``/``fp_last``).

    Options: ``stochastic`` binarization; ``loss='squared_hinge'`` (the paper's L2-SVM output);
    ``lr_scale`` applies the per-layer Glorot learning-rate scale of the authors' code;
    ``shift_bn`` swaps every BatchNorm for shift-based BatchNorm (Algorithm 3,
    :class:`bnnbench.nn.shift.ShiftBatchNorm`); shift-based AdaMax (Algorithm 4) is the optimizer
    ``optimizer=shift_adamax`` (:class:`bnnbench.nn.shift.ShiftAdamax`).
    Reproduces: survey Table 1.1 (MNIST 1.40 % / CIFAR-10 10.15 % test error) at full scale.
    """

    name = "bnn"
    paper = "Courbariaux et al. 2016"
    binarizes = "weights and activations (sign)"

    def __init__(self, stochastic: bool = False, lr_scale: bool = False, shift_bn: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stochastic = stochastic
        self.lr_scale = lr_scale
        self.shift_bn = shift_bn

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)
        replace_layers(model, names, lambda _, layer: binary_layer(
            layer, stochastic=self.stochastic, binarize_input=True))
        if self.shift_bn:
            replace_batchnorms(model)
        return replace_activations(model, (nn.ReLU,), lambda _: nn.Hardtanh())

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if not self.lr_scale:
            return super().param_groups(model)
        groups, scaled = [], set()
        for _, layer in quantized_layers(model):
            groups.append({"params": [layer.weight], "lr_scale": glorot_lr_scale(layer)})
            scaled.add(id(layer.weight))
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in scaled]
        return [{"params": rest}, *groups]
