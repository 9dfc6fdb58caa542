"""Quantizers as small modules (larq style): a pure function plus a ``precision`` attribute.

A quantizer maps a real tensor to its quantized value in the forward pass and carries the
gradient estimator of its paper. ``precision`` (bits per element) and ``scales_per_channel``
(float32 values stored per output channel, for weight quantizers) are read by the size
accounting; they describe what a deployed layer stores, not how training computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnbench import functional as F


class Quantizer(nn.Module):
    """Base class: ``forward(x)`` returns the quantized tensor.

    Attributes:
        precision: bits per quantized element at deployment.
        scales_per_channel: float32 scale values stored per output channel (weights only).
        scales_per_tensor: float32 scale values stored per layer (weights only).
    """

    precision: int = 32
    scales_per_channel: int = 0
    scales_per_tensor: int = 0


class SignQuantizer(Quantizer):
    """BinaryNet's sign: -1 where x < 0 else +1 (deterministic), or stochastic.

    Forward (Courbariaux et al. 2016, Eq. 1-2):
        deterministic: q = sign(x), with sign(0) = +1 and sign(NaN) = +1 (q = -1 iff x < 0:
        the rule of every path, the packed kernels' bits included, so a NaN input gets the
        same class from the trained and the packed model);
        stochastic:    q = +1 with probability hard_sigmoid(x) = clip((x + 1) / 2, 0, 1), else -1.
    Backward (straight-through estimator, Eq. 4): dq/dx = 1_{|x| <= 1} with ``cancel=True``
    (activations); dq/dx = 1 with ``cancel=False`` (the authors' weight gradient, which reaches
    the latent weight unmasked: a weight past the clip bound must still be able to move back).
    Stochastic sampling is used in training only; evaluation uses the deterministic sign, as in
    the authors' code.
    """

    precision = 1

    def __init__(self, stochastic: bool = False, cancel: bool = True) -> None:
        super().__init__()
        self.stochastic = stochastic
        self.cancel = cancel

    def forward(self, x: Tensor) -> Tensor:
        if self.stochastic and self.training:
            return F.stochastic_sign(x, cancel=self.cancel)
        return F.sign_ste(x, self.cancel)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}, cancel={self.cancel}"


def _identity(x: Tensor) -> Tensor:
    return x


class Identity(Quantizer):
    """Full precision: no quantization (precision 32)."""

    def forward(self, x: Tensor) -> Tensor:
        return _identity(x)


def clamp_(weight: Tensor, bound: float) -> None:
    """Clip latent weights in place to [-bound, bound] (BinaryConnect, Sec. 2.4)."""
    with torch.no_grad():
        weight.clamp_(-bound, bound)
