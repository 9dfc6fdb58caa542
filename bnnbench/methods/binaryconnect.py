"""BinaryConnect (Courbariaux, Bengio, David, NeurIPS 2015).

"BinaryConnect: Training Deep Neural Networks with binary weights during propagations",
arXiv:1511.00363.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bnnbench.errors import check_range
from bnnbench.methods.base import BinarizationMethod, check_choice, layers_to_binarize, \
    register_method, replace_layers
from bnnbench.methods.bnn import LATENT_INITS, binary_layer, glorot_lr_scale, init_latent_weights
from bnnbench.nn.layers import quantized_layers


def glorot_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """One group per binary layer's latent weight with ``lr_scale = glorot_lr_scale(layer)``.

    The authors' code (BinaryConnect and BinaryNet) scales each binary layer's learning rate by
    ``1 / sqrt(1.5 / (fan_in + fan_out))``; every other parameter stays in one unscaled group.
    """
    groups, scaled = [], set()
    for _, layer in quantized_layers(model):
        if layer.weight_bits < 32:
            groups.append({"params": [layer.weight], "lr_scale": glorot_lr_scale(layer)})
            scaled.add(id(layer.weight))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in scaled]
    return [{"params": rest}, *groups]


@register_method
class BinaryConnect(BinarizationMethod):
    """Binary weights, real activations; latent real weights updated and clipped.

    Forward (Sec. 2.2-2.3): ``W_b = sign(W)`` (deterministic, sign(0) = +1) or stochastic
    ``W_b = +1`` with probability ``hard_sigmoid(W) = clip((W + 1) / 2, 0, 1)``; activations and
    the layer's input stay real: ``y = W_b x + b``. Evaluation uses the deterministic sign (the
    authors' code evaluates the *real* weights of a stochastic run; we evaluate the binary net).
    Backward: ``dL/dW = dL/dW_b`` (Algorithm 1 and the authors' Theano code apply the gradient
    w.r.t. the binary weights to the latent ones unmasked); ``weight_grad_mask=true`` multiplies
    it by ``1{|W| <= 1}`` (:func:`bnnbench.functional.sign_ste`), a knob of its own: with
    ``latent_clip: null`` the mask would freeze every weight that has passed 1.
    Update: latent weights clipped to ``[-latent_clip, latent_clip]`` after every step (Sec. 2.4,
    H = 1); ``latent_clip: null`` removes the clip.

    Layers: the paper binarizes every layer's weights, the first and the last included, so
    ``fp_first`` and ``fp_last`` default to False here. ReLUs are kept.
    Latent init: ``latent_init='host'`` (default) keeps the host model's initialization;
    ``'uniform'`` draws the binary layers' latent weights from U(-H, H) with H = ``latent_clip``
    (1 when the clip is off) and zeroes their biases, as the authors' Theano layers
    (:func:`bnnbench.methods.bnn.init_latent_weights`).
    Schedule (authors' MNIST script): Adam 1e-3 decayed exponentially to 3e-6 over 250 epochs
    (:func:`bnnbench.schedulers.exponential_to`); ``+preset=binaryconnect_mnist`` makes the decay
    span ``trainer.max_epochs``; the method config's default is BinaryNet's ``scheduler=binarynet``.
    Options: ``stochastic``; ``loss='squared_hinge'`` (the paper's L2-SVM output layer);
    ``lr_scale`` (default on: the authors' per-layer Glorot learning-rate scale
    ``1 / sqrt(1.5 / (fan_in + fan_out))``, :func:`glorot_param_groups`; false: one lr).
    Reproduces: survey Table 1.1, MNIST 1.29 +- 0.08 % / CIFAR-10 9.90 % test error (full scale).
    """

    name = "binaryconnect"
    paper = "Courbariaux et al. 2015"
    binarizes = "weights (sign, deterministic or stochastic)"

    def __init__(self, stochastic: bool = False, lr_scale: bool = True,
                 latent_clip: float | None = 1.0, weight_grad_mask: bool = False,
                 latent_init: str = "host", fp_first: bool = False, fp_last: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(fp_first=fp_first, fp_last=fp_last, **kwargs)
        check_choice("method.latent_init", latent_init, LATENT_INITS)
        self.latent_init = latent_init
        if latent_clip is not None:
            check_range("method.latent_clip", latent_clip, low=0, low_inclusive=False)
        self.stochastic = stochastic
        self.lr_scale = lr_scale
        self.latent_clip = latent_clip
        self.weight_grad_mask = weight_grad_mask

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)
        replace_layers(model, names, lambda _, layer: binary_layer(
            layer, stochastic=self.stochastic, binarize_input=False,
            latent_clip=self.latent_clip, weight_grad_mask=self.weight_grad_mask))
        init_latent_weights(model, self.latent_init, bound=self.latent_clip or 1.0)
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return glorot_param_groups(model) if self.lr_scale else super().param_groups(model)
