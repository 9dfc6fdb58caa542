"""Compact BinaryNet (Tang, Hua, Wang, AAAI 2017).

"How to Train a Compact Binary Neural Network with High Accuracy?"
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from bnnbench import functional as BF
from bnnbench.errors import check_range
from bnnbench.methods.base import BinarizationMethod, check_choice, first_and_last, \
    layers_to_binarize, register_method, replace_layers, set_submodule
from bnnbench.nn.layers import QuantConv2d, QuantLinear, is_quantized, quantized_layers
from bnnbench.nn.paper_layers import Scale, activation_before_norm, \
    move_dropout_after_quantizer, remove_output_norm, replace_relus
from bnnbench.nn.paper_quantizers import ResidualSignQuantizer, check_bits
from bnnbench.nn.quantizers import SignQuantizer

TANG_ACTIVATIONS = ("prelu", "relu")


@register_method
class CompactBinaryNet(BinarizationMethod):
    """BinaryNet trained with Tang et al.'s recipe: every column of their Tables 2-5 is a knob.

    Forward (Algorithm 1): ``B_l = sign(W_l)`` (no weight scale), input ``A_{l-1}`` replaced by
    ``m`` residual binarizations ``sum_i alpha_i H_i`` (Eq. 3, ``activation_bits`` = m), then
    ``O_l = B_l A^b_{l-1}``, ``S_l = PReLU(O_l)``, ``A_l = BatchNorm(S_l)``: ReLUs become
    ``activation`` (``prelu``, channel-wise, or ``relu``) and move in front of their BatchNorm
    (:func:`bnnbench.nn.paper_layers.activation_before_norm`), so BatchNorm comes right before
    each binary layer. A binary last layer (``fp_last=false``) is followed by a scale layer, one
    learnable scalar initialized to ``scale_init`` = 0.001, when ``scale_layer`` is on.
    Output: the paper's last layer feeds the softmax directly (binary -> scale -> softmax), so a
    BatchNorm the host puts after its last layer (mlp, vgg_small) is removed, whatever
    ``fp_last``/``scale_layer`` say (``BN(s z) = BN(z)`` would cancel the scale layer and make
    Table 3's rows identical); a last layer without bias gets a zero-initialized one in its
    place (:func:`bnnbench.nn.paper_layers.remove_output_norm`).
    Dropout acts after the residual binarization (a dropped unit contributes 0, not
    ``alpha_1 - alpha_2``).
    Loss: task loss + ``bipolar_lambda * sum_l sum_ij (1 - W_ij^2)`` over binary layers (Eq. 2,
    lambda = 5e-7). Backward: ``g_A = g o 1{|A| <= 1}``; the weight gradient reaches the latent
    weights unmasked (BinaryNet's rule; ``weight_grad_mask=true`` masks it to ``|W| <= 1``);
    latent weights clipped to [-1, 1].
    First layer full precision. Optimizer (conf/method/tang.yaml): Adam, lr 1e-4, halved when the
    training loss plateaus.

    One binarization (``activation_bits=1``): the bare ``sign(A)`` of BinaryNet, as the m = 1
    rows of Tables 2-3 train it (so a binary last layer's outputs span [-N, N], the range the
    scale layer exists for); ``m1_alpha=true`` scales it by ``alpha_1 = mean|A|`` (Eq. 3 with
    m = 1). With m >= 2 the residual alphas are always used.
    Alpha scope: ``per_sample_alpha=true`` (default) takes each ``alpha_i`` over one sample's
    activations; the paper's wording is one alpha per activation tensor (``per_sample_alpha=false``,
    i.e. over the whole batch), which makes a sample's prediction at evaluation depend on the rest
    of its batch: a deployed network classifies one image at a time, so we default to per sample.

    Table knobs: Table 2 ``optimizer.lr`` and ``activation``; Table 3 ``fp_last`` and
    ``scale_layer``; Table 4 ``activation_bits=2`` with a binary last layer; Table 5
    ``activation_bits`` (1 or 2). Reproduces: Tang Tables 2-6 (e.g. NIN, A 2 bits, last binary +
    scale: 70.4/45.8 top-5/top-1).
    """

    name = "tang"
    paper = "Tang et al. 2017"
    binarizes = "weights (sign) and activations (m residual signs)"

    def __init__(self, activation: str = "prelu", activation_bits: int = 2,
                 per_sample_alpha: bool = True, m1_alpha: bool = False, scale_layer: bool = True,
                 scale_init: float = 1e-3, bipolar_lambda: float = 5e-7,
                 latent_clip: float | None = 1.0, weight_grad_mask: bool = False,
                 fp_last: bool = False, **kwargs: Any) -> None:
        super().__init__(fp_last=fp_last, **kwargs)
        check_choice("method.activation", activation, TANG_ACTIVATIONS)
        self.activation = activation
        self.activation_bits = check_bits("method.activation_bits", activation_bits)
        self.per_sample_alpha = per_sample_alpha
        self.m1_alpha = m1_alpha
        self.scale_layer = scale_layer
        check_range("method.scale_init", scale_init, low=0, low_inclusive=False)
        self.scale_init = scale_init
        check_range("method.bipolar_lambda", bipolar_lambda, low=0)
        self.bipolar_lambda = bipolar_lambda
        if latent_clip is not None:
            check_range("method.latent_clip", latent_clip, low=0, low_inclusive=False)
        self.latent_clip = latent_clip
        self.weight_grad_mask = weight_grad_mask

    def convert(self, model: nn.Module) -> nn.Module:
        _, last = first_and_last(model)
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)

        def make(_: str, layer: nn.Module) -> nn.Module:
            cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
            bare_sign = self.activation_bits == 1 and not self.m1_alpha
            inputs = (SignQuantizer() if bare_sign else
                      ResidualSignQuantizer(self.activation_bits, self.per_sample_alpha))
            return cls.from_float(
                layer, weight_quantizer=SignQuantizer(cancel=self.weight_grad_mask),
                input_quantizer=inputs, latent_clip=self.latent_clip)

        replace_relus(model, self.activation)  # channel counts read before anything moves
        replace_layers(model, names, make)
        activation_before_norm(model)
        remove_output_norm(model, last)
        move_dropout_after_quantizer(model)
        last_layer = model.get_submodule(last)
        if self.scale_layer and is_quantized(last_layer):
            set_submodule(model, last, nn.Sequential(OrderedDict(
                layer=last_layer, scale=Scale(self.scale_init))))
        return model

    def regularizer(self, model: nn.Module) -> Tensor | None:
        if self.bipolar_lambda == 0:
            return None
        weights = [layer.weight for _, layer in quantized_layers(model) if is_quantized(layer)]
        if not weights:
            return None
        return self.bipolar_lambda * BF.bipolar_regularizer(weights)
