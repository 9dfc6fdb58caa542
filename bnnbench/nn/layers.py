"""Linear and Conv2d layers whose weights and inputs pass through quantizers.

``QuantLinear``/``QuantConv2d`` compute ``op(input_quantizer(x), weight_quantizer(W)) + b``: the
latent real weights ``W`` are what the optimizer updates; the quantized weights are what the
deployed network uses. Binarizing the *input* of a layer (larq's ``input_quantizer``) rather than
the output of the previous activation keeps the full-precision first layer's input real and makes
"which layers are binary" one decision per layer.

Dropout in front of a binary layer belongs *after* its input quantizer (BinaryNet's order, BN ->
binarize -> Dropout -> next layer, in the authors' Theano/Torch code and XNOR-Net's PyTorch port):
a dropped unit must contribute 0 to the product, while ``sign(0) = +1`` would turn it into +1.
Each layer therefore has an ``input_dropout`` slot (identity unless a method moves the host's
Dropout there, :func:`bnnbench.nn.paper_layers.move_dropout_after_quantizer`):
``y = op(input_dropout(input_quantizer(x)), weight_quantizer(W)) + b``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.nn.quantizers import Identity, Quantizer


class _QuantMixin:
    weight_quantizer: Quantizer
    input_quantizer: Quantizer
    input_dropout: nn.Module
    latent_clip: float | None

    def _init_quant(self, weight_quantizer: Quantizer | None, input_quantizer: Quantizer | None,
                    latent_clip: float | None) -> None:
        self.weight_quantizer = weight_quantizer if weight_quantizer is not None else Identity()
        self.input_quantizer = input_quantizer if input_quantizer is not None else Identity()
        self.input_dropout = nn.Identity()  # a method may put the host's Dropout here
        self.latent_clip = latent_clip

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.precision

    @property
    def input_bits(self) -> int:
        return self.input_quantizer.precision

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)  # type: ignore[attr-defined]

    def quantized_input(self, x: Tensor) -> Tensor:
        """What the layer multiplies: ``input_dropout(input_quantizer(x))``."""
        return self.input_dropout(self.input_quantizer(x))


class QuantLinear(_QuantMixin, nn.Linear):
    """``y = input_dropout(input_quantizer(x)) @ weight_quantizer(W).T + b``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_quantizer: Quantizer | None = None,
                 input_quantizer: Quantizer | None = None,
                 latent_clip: float | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_quant(weight_quantizer, input_quantizer, latent_clip)

    @classmethod
    def from_float(cls, layer: nn.Linear, **kwargs) -> "QuantLinear":
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, **kwargs)
        new.weight.data.copy_(layer.weight.data)
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.data)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``y = conv2d(input_dropout(input_quantizer(x)), weight_quantizer(W)) + b``.

    Padding is zero padding applied *after* the input quantizer, so a binary conv sees
    {-1, 0, +1} inputs at the border: the packed inference path reproduces exactly this.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *,
                 weight_quantizer: Quantizer | None = None,
                 input_quantizer: Quantizer | None = None,
                 latent_clip: float | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)
        self._init_quant(weight_quantizer, input_quantizer, latent_clip)

    @classmethod
    def from_float(cls, layer: nn.Conv2d, **kwargs) -> "QuantConv2d":
        if layer.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d supports zero padding only, got {layer.padding_mode!r}")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None, **kwargs)
        new.weight.data.copy_(layer.weight.data)
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.data)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


def is_quantized(module: nn.Module) -> bool:
    """True for a layer with quantized (not full-precision) weights."""
    return isinstance(module, _QuantMixin) and module.weight_bits < 32


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) for every QuantLinear/QuantConv2d in the model, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, _QuantMixin):
            yield name, module


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` of ``model`` (e.g. ``layer1.0.conv1``)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
