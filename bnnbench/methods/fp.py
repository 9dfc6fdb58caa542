"""The full-precision reference: the same architecture, nothing binarized."""

from __future__ import annotations

from typing import Any

from torch import nn

from bnnbench.methods.base import (
    BinarizationMethod,
    check_choice,
    register_method,
    replace_activations,
)

#: the full-precision network's activation: the host's ReLUs, or Bi-Real's clip(-1, x, 1)
ACTIVATIONS = ("relu", "clip")


@register_method
class FullPrecision(BinarizationMethod):
    """Full-precision (float32) training of the architecture.

    This is what a run without ``+method=...`` trains: the baseline every table compares to.
    Forward: y = W x + b; backward: ordinary autograd.

    ``activation``: ``relu`` (default) keeps the host as it is; ``clip`` replaces every ReLU by
    ``clip(-1, x, 1)`` (``nn.Hardtanh``, gradient ``1{-1 < x < 1}``), the real-valued network
    Bi-Real Net pre-trains to initialise the binary one (Liu et al. 2018, Sec. 3.4: "we replace
    ReLU with clip(-1, x, 1) to pre-train the real-valued CNN model, as the activation of the
    clip function is closer to the sign function than ReLU"; the authors' Caffe README reaches it
    through ReLU -> leaky-clip -> clip fine-tuning). The ``fp_init`` recipe's first stage
    (conf/recipe/fp_init.yaml) uses it.
    """

    name = "fp"
    paper = "-"
    binarizes = "nothing (float32 reference)"

    def __init__(self, activation: str = "relu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("method.activation", activation, ACTIVATIONS)
        self.activation = activation

    def convert(self, model: nn.Module) -> nn.Module:
        if self.activation == "clip":
            replace_activations(model, (nn.ReLU,), lambda _: nn.Hardtanh(-1.0, 1.0))
        return model
