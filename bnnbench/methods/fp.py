"""The full-precision reference: the same architecture, nothing binarized."""

from __future__ import annotations

from torch import nn

from bnnbench.methods.base import BinarizationMethod, register_method


@register_method
class FullPrecision(BinarizationMethod):
    """Full-precision (float32) training of the unmodified architecture.

    This is what a run without ``+method=...`` trains: the baseline every table compares to.
    Forward: y = W x + b; backward: ordinary autograd.
    """

    name = "fp"
    paper = "-"
    binarizes = "nothing (float32 reference)"

    def convert(self, model: nn.Module) -> nn.Module:
        return model
