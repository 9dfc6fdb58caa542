"""DoReFa-Net (Zhou, Wu, Ni, Zhou, Wen, Zou, 2016).

"DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth Gradients",
arXiv:1606.06160.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bnnbench.methods.base import BinarizationMethod, first_and_last, layers_to_binarize, \
    register_method, replace_layers
from bnnbench.nn.layers import set_submodule
from bnnbench.nn.paper_layers import GradQuantConv2d, GradQuantLinear
from bnnbench.nn.paper_quantizers import DoReFaActivationQuantizer, DoReFaWeightQuantizer, \
    check_bits


def last_relu_before(model: nn.Module, layer_name: str) -> str | None:
    """Name of the last ``nn.ReLU`` registered before ``layer_name`` (the order the host models
    define their layers: on AlexNet/mlp the classifier's last ReLU, on a timm ResNet the last
    block's ``act2``), or None."""
    found = None
    for name, module in model.named_modules():
        if name == layer_name:
            return found
        if isinstance(module, nn.ReLU):
            found = name
    return None


@register_method
class DoReFa(BinarizationMethod):
    """k-bit weights (W), activations (A) and gradients (G); bit widths configurable.

    Forward, with ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)``:
      weights (Sec. 2.3): ``w_bits = 1``: ``sign(W) E``, ``E = mean|W|`` per layer;
      otherwise ``2 quantize_k(tanh W / (2 max|tanh W|) + 1/2) - 1``;
      activations (Sec. 2.4): ``quantize_k(clip(x, 0, 1))`` on the input of each quantized layer.
    Backward: straight-through ``quantize_k``; gradients through tanh/max by autograd; the
    gradient arriving at each quantized layer's output is quantized to ``g_bits`` (Sec. 2.5):
    ``2 max|dr| [quantize_k(dr / (2 max|dr|) + 1/2 + N(k)) - 1/2]``, ``N(k) ~ U(-1/2, 1/2) /
    (2^k - 1)``, max per sample (:func:`bnnbench.functional.dorefa_gradient`).
    ``32`` bits means full precision for any of W/A/G. First and last layers full precision;
    ReLUs kept (``clip(ReLU(x), 0, 1) = clip(x, 0, 1)``), except the one right before the last
    layer, which becomes ``clip(x, 0, 1)`` when activations are quantized (``clip_before_last``,
    default on): the authors' tensorpack AlexNet feeds its FP classifier ``clip(x, 0, 1)``
    (``nonlin``), not an unbounded ReLU; with ``a_bits=32`` they keep the ReLU, and so do we.
    Defaults: W1 A2 G32 (the W1/A2 rows of Tang Tables 1, 4, 6: AlexNet -/49.8 top-1); the
    paper's 1-2-6 is ``g_bits=6``. Reproduces: ABC-Net Table (ResNet-18 W1 A4 59.2/81.5).
    """

    name = "dorefa"
    paper = "Zhou et al. 2016"
    binarizes = "weights, activations, gradients (k bits each)"

    def __init__(self, w_bits: int = 1, a_bits: int = 2, g_bits: int = 32,
                 clip_before_last: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.w_bits = check_bits("method.w_bits", w_bits, high=32)
        self.a_bits = check_bits("method.a_bits", a_bits, high=32)
        self.g_bits = check_bits("method.g_bits", g_bits, high=32)
        self.clip_before_last = clip_before_last

    def convert(self, model: nn.Module) -> nn.Module:
        names = layers_to_binarize(model, self.fp_first, self.fp_last, self.fp_shortcut)

        def make(_: str, layer: nn.Module) -> nn.Module:
            cls = GradQuantConv2d if isinstance(layer, nn.Conv2d) else GradQuantLinear
            acts = DoReFaActivationQuantizer(self.a_bits) if self.a_bits < 32 else None
            return cls.from_float(layer, weight_quantizer=DoReFaWeightQuantizer(self.w_bits),
                                  input_quantizer=acts, grad_bits=self.g_bits)

        replace_layers(model, names, make)
        if self.clip_before_last and self.a_bits < 32:
            _, last = first_and_last(model)
            relu = last_relu_before(model, last)
            if relu is not None:
                set_submodule(model, relu, nn.Hardtanh(0.0, 1.0))
        return model
