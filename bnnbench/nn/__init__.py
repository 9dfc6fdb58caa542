"""Quantized layers and quantizer modules built from :mod:`bnnbench.functional`."""

from bnnbench.nn.layers import QuantConv2d, QuantLinear, is_quantized, quantized_layers
from bnnbench.nn.quantizers import Quantizer, SignQuantizer

__all__ = [
    "QuantConv2d",
    "QuantLinear",
    "Quantizer",
    "SignQuantizer",
    "is_quantized",
    "quantized_layers",
]
