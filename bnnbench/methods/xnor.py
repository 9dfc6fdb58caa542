"""XNOR-Net and Binary-Weight-Networks (Rastegari, Ordonez, Redmon, Farhadi, ECCV 2016).

"XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks",
arXiv:1603.05279. One paper, two methods: ``bwn`` (binary weights) and ``xnor`` (binary weights
and inputs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.methods.base import BinarizationMethod, check_choice, layers_to_binarize, \
    register_method, replace_layers
from bnnbench.nn.layers import QuantConv2d, QuantLinear, is_quantized, quantized_layers
from bnnbench.nn.paper_layers import ACTIVATIONS, XnorConv2d, XnorLinear, block_input_norm, \
    compose_xnor_block, drop_affine, move_dropout_after_quantizer
from bnnbench.nn.paper_quantizers import ScaledSignQuantizer
from bnnbench.nn.quantizers import SignQuantizer


def mean_center_(weight: Tensor) -> None:
    """Subtract, in place, the mean over the input channels (dim 1) at each output channel and
    kernel position: ``W[o, :, h, w] -= mean_c W[o, c, h, w]`` (a Linear: ``W[o, :] -= mean_i
    W[o, i]``). The authors' ``meancenterConvParms`` (allenai/XNOR-Net util.lua:
    ``weight:mean(2)`` over Torch's input-plane dimension)."""
    with torch.no_grad():
        weight.sub_(weight.mean(dim=1, keepdim=True))


class _XnorBase(BinarizationMethod):
    def __init__(self, latent_clip: float | None = 1.0, mean_center: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if latent_clip is not None:
            check_range("method.latent_clip", latent_clip, low=0, low_inclusive=False)
        self.latent_clip = latent_clip
        self.mean_center = mean_center

    @staticmethod
    def check_activation(activation: str, network: str, block: str) -> None:
        """The activation between BN and sign: one of ``ACTIVATIONS``, never ReLU (BN -> ReLU ->
        sign is +1 everywhere: a constant network)."""
        check_choice("method.activation", activation, ACTIVATIONS)
        if activation == "relu":
            raise BnnbenchError(
                f"method.activation='relu' makes {network} constant (BN -> ReLU -> sign is +1 "
                f"everywhere); use method.activation=identity ({block}) or htanh/prelu")

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Project the binary layers' latent weights: mean-center (``mean_center``), then clip.

        The authors run ``meancenterConvParms`` then ``clampConvParms`` on the binary layers
        before every forward (train.lua); after every step, and once in ``convert``, is the same
        sequence of weights.
        """
        if self.mean_center:
            for _, layer in quantized_layers(model):
                if is_quantized(layer):
                    mean_center_(layer.weight)
        super().after_optimizer_step(model)


@register_method
class BinaryWeightNetwork(_XnorBase):
    """BWN: scaled binary weights, real activations (XNOR-Net paper, Sec. 3.1).

    Forward: ``W~ = alpha_o sign(W)`` with ``alpha_o = mean |W_o|`` per output filter
    (Eq. 4-6), ``y = W~ * x + b``. Backward: exact chain rule through ``alpha`` and the STE of
    sign (:func:`bnnbench.functional.xnor_weight`). Latent weights clipped to
    ``[-latent_clip, latent_clip]`` after each step (the authors' code clamps to [-1, 1]);
    ``latent_clip: null`` disables it. First and last layers full precision; ReLUs kept.
    ``mean_center`` (default false; the ``bwn_alexnet`` preset sets it): before every step's
    forward the authors subtract from each binary layer's latent weights their mean over the
    input channels (:func:`mean_center_`, allenai/XNOR-Net ``meancenterConvParms``), then clamp;
    we do it after every optimizer step and once at ``convert``.
    Optimizer: the authors train BWN with SGD momentum 0.9, lr 1e-2 and weight decay 5e-4 in
    their step regimes (``+preset=bwn_alexnet``); the method config keeps Adam 1e-3.
    Reproduces: ABC-Net Table (ResNet-18 BWN 60.8/83.0 top-1/top-5); AlexNet 56.8 top-1
    (``bwn_alexnet``).
    """

    name = "bwn"
    paper = "Rastegari et al. 2016"
    binarizes = "weights (sign x per-filter mean|W|)"

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)

        def make(_: str, layer: nn.Module) -> nn.Module:
            cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
            return cls.from_float(layer, weight_quantizer=ScaledSignQuantizer(),
                                  latent_clip=self.latent_clip)

        replace_layers(model, names, make)
        if self.mean_center:  # the first forward sees projected weights, as theirs
            self.after_optimizer_step(model)
        return model


@register_method
class XnorNet(_XnorBase):
    """XNOR-Net: scaled binary weights and binary inputs with the activation scale K (Sec. 3.2).

    Forward: ``I * W ~ (sign(I) (*) sign(W)) . K alpha`` with ``alpha_o = mean|W_o|`` per filter
    and ``K = box_{kh x kw}(mean_c |I|)`` at the conv's stride and padding (Linear: ``K =
    mean|I|`` per sample); ``activation_scale=false`` drops K, as the authors' released code does.
    Backward: STE ``1{|I| <= 1}`` for sign(I), exact chain rule for ``alpha`` (see
    :func:`bnnbench.functional.xnor_weight`), autograd through K.

    Block (Fig. 3: BNorm -> BinActiv -> BinConv -> Pool), exactly as allenai/XNOR-Net
    ``models/alexnetxnor.lua`` composes AlexNet::

        conv1 -> BN -> ReLU -> MaxPool                           full precision
        BN -> sign -> conv2 -> MaxPool, BN -> sign -> conv3, ... binary, fc6/fc7 included
        BN -> ReLU -> fc8                                        full precision

    Every binary layer binarizes the output of a BatchNorm of its own (over the layer's input);
    ``activation`` (default ``identity``) is only what sits between that BatchNorm and the sign,
    and every other ReLU of the host stays a ReLU: after the full-precision first layer
    (``BN -> ReLU``, then the next binary layer's own BN), before the full-precision classifier
    (``BN -> ReLU`` of the last binary layer's output), and on a ResNet after each residual
    addition and in the stem. On a host ``layer -> BN -> ReLU`` after a binary layer, that BN is
    the next binary layer's and the ReLU becomes ``activation``;
    :class:`~bnnbench.nn.blocks.ConvBlock` stacks are reordered to ``bn -> act -> conv -> pool``;
    a binary layer without such a BN (one after a full-precision layer, AlexNet's fc6 after the
    pooled conv5, a ResNet block's conv1 and downsample, which read the residual sum) gets
    ``BN -> activation`` in front (the layer moves to ``<name>.layer``); a full-precision layer
    that would read a binary layer's raw output (NIN's cccp8) gets ``BN -> ReLU`` in front
    (:func:`bnnbench.nn.paper_layers.compose_xnor_block`). The authors' PyTorch port
    (jiecaoyu/XNOR-Net-PyTorch ``models/alexnet.py``) differs: a ReLU after every binary conv and
    BN -> Dropout (no ReLU) into its classifier; the Torch code is the one followed.
    Dropout sits after the binarization (XNOR-Net's PyTorch port: BN -> BinActive -> Dropout ->
    conv), so a dropped unit contributes 0 (:func:`~bnnbench.nn.paper_layers.
    move_dropout_after_quantizer`); ``K`` is computed from the undropped input.
    ``activation=relu`` is rejected: BN -> ReLU -> sign is +1 everywhere (a constant network).
    Weight gradient: Eq. 7's ``1{|W| <= 1}`` on the ``alpha`` term, as the authors'
    ``updateBinaryGradWeight``; the ``1/n`` term keeps weights past the clip bound moving.
    First and last layers full precision.
    ``mean_center`` (default false): the authors' per-step mean-centering of the latent weights
    over the input channels before the clamp (see :class:`BinaryWeightNetwork`).
    ``affine_bn`` (default true): false makes the BatchNorm of every binary block (the one whose
    output the block binarizes) non-affine, ``(x - mean) / sqrt(var + eps)``, as
    alexnetxnor.lua's ``SpatialBatchNormalization(n, 1e-4, false)``; with it the binarization
    threshold is the running mean, not a learned shift.
    Optimizer (authors' code): Adam 1e-3 in step regimes (``+preset=xnor_alexnet``).
    Reproduces: Tang Table 6 / ABC-Net Table (AlexNet 69.2/44.2, ResNet-18 73.2/51.2 top-5/top-1).
    """

    name = "xnor"
    paper = "Rastegari et al. 2016"
    binarizes = "weights (sign x per-filter scale) and activations (sign x K)"

    def __init__(self, activation_scale: bool = True, activation: str = "identity",
                 affine_bn: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_activation(activation, "XNOR-Net", "the paper's block")
        self.activation_scale = activation_scale
        self.activation = activation
        self.affine_bn = affine_bn

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)

        def make(_: str, layer: nn.Module) -> nn.Module:
            cls = XnorConv2d if isinstance(layer, nn.Conv2d) else XnorLinear
            return cls.from_float(layer, weight_quantizer=ScaledSignQuantizer(),
                                  input_quantizer=SignQuantizer(),
                                  latent_clip=self.latent_clip,
                                  activation_scale=self.activation_scale)

        replace_layers(model, names, make)
        compose_xnor_block(model, names, self.activation)
        move_dropout_after_quantizer(model)
        if not self.affine_bn:
            for name, _ in list(quantized_layers(model)):
                found = block_input_norm(model, name)
                if found is not None and found[0].affine:
                    drop_affine(found[0])
        if self.mean_center:  # the first forward sees projected weights, as theirs
            self.after_optimizer_step(model)
        return model
