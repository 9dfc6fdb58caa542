"""BinaryNet / BNN (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

"Binarized Neural Networks: Training Deep Neural Networks with Weights and Activations
Constrained to +1 or -1", arXiv:1602.02830 (NeurIPS 2016 as "Binarized Neural Networks").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bnnbench.methods.base import (
    BinarizationMethod,
    check_choice,
    first_and_last,
    layers_to_binarize,
    register_method,
    replace_activations,
    replace_layers,
)
from bnnbench.nn.layers import QuantConv2d, QuantLinear, is_quantized, quantized_layers
from bnnbench.nn.paper_layers import move_dropout_after_quantizer
from bnnbench.nn.quantizers import SignQuantizer
from bnnbench.nn.shift import replace_batchnorms


def binary_layer(layer: nn.Module, *, stochastic: bool, binarize_input: bool,
                 latent_clip: float | None = 1.0, weight_grad_mask: bool = False) -> nn.Module:
    """The BinaryNet version of a Conv2d/Linear: sign weights and (optionally) sign inputs.

    The input STE cancels outside [-1, 1]; the weight gradient is masked to ``|W| <= 1`` only
    with ``weight_grad_mask`` (the authors apply dL/dW_b to W unmasked and clip W instead).
    """
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    return cls.from_float(
        layer,
        weight_quantizer=SignQuantizer(stochastic=stochastic, cancel=weight_grad_mask),
        input_quantizer=SignQuantizer(stochastic=stochastic) if binarize_input else None,
        latent_clip=latent_clip,
    )


LATENT_INITS = ("host", "uniform")


def init_latent_weights(model: nn.Module, latent_init: str, bound: float = 1.0) -> None:
    """Initialize every binary layer's latent weights as the authors' code does, in place.

    ``host``: keep the host model's initialization (PyTorch/timm defaults). ``uniform``: the
    authors' Theano ``binary_net.DenseLayer``/``Conv2DLayer`` (BinaryConnect and BinaryNet): latent
    weights ``W ~ U(-H, H)`` with ``H = bound`` (their ``H = 1``, the clip bound) and biases 0
    (Lasagne's default ``b = Constant(0)``). Full-precision layers keep the host's init.
    """
    check_choice("method.latent_init", latent_init, LATENT_INITS)
    if latent_init == "host":
        return
    with torch.no_grad():
        for _, layer in quantized_layers(model):
            if is_quantized(layer):
                layer.weight.uniform_(-bound, bound)
                if layer.bias is not None:
                    layer.bias.zero_()


def glorot_lr_scale(layer: nn.Module) -> float:
    """BinaryNet's per-layer learning-rate scale 1 / sqrt(1.5 / (fan_in + fan_out)).

    The authors' code multiplies each binary layer's learning rate by this Glorot-derived factor
    (with H = 1, the latent-weight clip bound). Conv: fan_in = k_h k_w C_in,
    fan_out = k_h k_w C_out.
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
        dL/dx = dL/dx_b * 1_{|x| <= 1};  dL/dW = dL/dW_b (Algorithm 1 and the authors' Theano
        ``binary_net.py``: the weight gradient is not masked; ``weight_grad_mask=true`` masks it
        to 1_{|W| <= 1}, which changes nothing while W stays clipped to [-1, 1]).
    Update: latent weights W are clipped to [-1, 1] after every step (Algorithm 1).
    Activations: every ReLU is replaced by Hardtanh (BinaryNet's htanh); because the next layer
    binarizes its input, sign(htanh(x)) = sign(x) and the htanh carries the STE window.
    Block order (authors' code): Linear/Conv -> BN -> htanh -> sign -> Dropout -> next layer:
    the host's Dropout moves behind the next layer's input quantizer
    (:func:`bnnbench.nn.paper_layers.move_dropout_after_quantizer`), so a dropped unit
    contributes 0 (a Dropout before the sign would make it sign(0) = +1).
    First and last layers stay full precision by default (``fp_first``/``fp_last``). A binary
    first layer (``fp_first=false``) binarizes its weights only: its input (the image) stays real,
    as in the paper (Sec. 2.5) and the authors' code, whose first layer reads the real pixels.

    Latent init: ``latent_init='host'`` (default) keeps the host model's initialization;
    ``'uniform'`` draws every binary layer's latent weights from U(-1, 1) and zeroes its biases,
    as the authors' ``binary_net.py`` (``W = lasagne.init.Uniform((-H, H))``, H = 1)
    (:func:`init_latent_weights`).
    Schedule (authors' scripts): Adam with the lr decayed exponentially once per epoch,
    MNIST 3e-3 -> 3e-7 over 1000 epochs, CIFAR-10 1e-3 -> 3e-7 over 500 epochs
    (:func:`bnnbench.schedulers.exponential_to`); the presets ``binarynet_mnist`` and
    ``binarynet_cifar10`` make the decay span ``trainer.max_epochs``. The method config's default
    ``scheduler=binarynet`` is MNIST's decay over a fixed 1000-epoch horizon.
    Options: ``stochastic`` binarization; ``loss='squared_hinge'`` (the paper's L2-SVM output);
    ``lr_scale`` (default on, Algorithm 1's per-layer learning-rate scale and the authors'
    ``W_LR_scale = "Glorot"``) multiplies each binary layer's learning rate by
    :func:`glorot_lr_scale`; ``lr_scale=false`` trains every parameter at the optimizer's lr;
    ``shift_bn`` swaps every BatchNorm for shift-based BatchNorm (Algorithm 3,
    :class:`bnnbench.nn.shift.ShiftBatchNorm`); shift-based AdaMax (Algorithm 4) is the optimizer
    ``optimizer=shift_adamax`` (:class:`bnnbench.nn.shift.ShiftAdamax`).
    Reproduces: survey Table 1.1 (MNIST 1.40 % / CIFAR-10 10.15 % test error) at full scale.
    """

    name = "bnn"
    paper = "Courbariaux et al. 2016"
    binarizes = "weights and activations (sign)"

    def __init__(self, stochastic: bool = False, lr_scale: bool = True, shift_bn: bool = False,
                 weight_grad_mask: bool = False, latent_init: str = "host",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("method.latent_init", latent_init, LATENT_INITS)
        self.latent_init = latent_init
        self.stochastic = stochastic
        self.lr_scale = lr_scale
        self.shift_bn = shift_bn
        self.weight_grad_mask = weight_grad_mask

    def convert(self, model: nn.Module) -> nn.Module:
        first, _ = first_and_last(model)
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)
        replace_layers(model, names, lambda name, layer: binary_layer(
            layer, stochastic=self.stochastic, binarize_input=name != first,
            weight_grad_mask=self.weight_grad_mask))
        move_dropout_after_quantizer(model)
        init_latent_weights(model, self.latent_init)
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
