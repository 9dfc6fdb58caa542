"""Quantizer modules of the papers beyond BinaryNet's sign (XNOR-Net, DoReFa, ABC-Net, Tang).

Each wraps one function of :mod:`bnnbench.functional` (where the math and the gradients are
documented) and states what a deployed layer stores: ``precision`` (bits per element; a sum of M
binary tensors costs M bits) and ``scales_per_channel`` / ``scales_per_tensor`` (float32 values
per output channel / per layer). Quantizers with learnable parameters (ABC-Net's shifts and betas)
register them as ordinary ``nn.Parameter`` so the optimizer sees them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnbench import functional as BF
from bnnbench.errors import BnnbenchError
from bnnbench.nn.quantizers import Quantizer


def check_bits(key: str, value: int, *, high: int | None = None) -> int:
    """A bit width / basis count: an int >= 1 (and <= ``high``); BnnbenchError on one line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
            high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise BnnbenchError(f"{key}={value!r} is out of range: need an integer >= 1{upper}")
    return value


class ScaledSignQuantizer(Quantizer):
    """XNOR-Net / BWN weights: ``alpha_o * sign(W)``, one ``alpha = mean|W|`` per output channel.

    See :func:`bnnbench.functional.xnor_weight` (forward, exact STE gradient, [XNOR] Eq. 4-7).

    ``scale_gradient=False`` keeps the forward and stops the gradient through ``alpha``:
    ``dL/dW_i = alpha_o g_i 1{|W_i| <= 1}`` (larq's ``MagnitudeAwareSign``:
    ``stop_gradient(mean|W|) * ste_sign(W)``). Bop sets it (:func:`bnnbench.optimizers.
    split_binary_groups`): its weights are +-1, where ``alpha = 1`` and this is ``g``, the
    gradient w.r.t. the binary weight, which is what Bop's moving average accumulates
    (Helwegen et al. 2019, Algorithm 2); the chain rule through ``alpha`` would add
    ``sign(W_i) / n * sum_j g_j sign(W_j)`` to every weight of the channel.
    """

    precision = 1
    scales_per_channel = 1

    def __init__(self, scale_gradient: bool = True) -> None:
        super().__init__()
        self.scale_gradient = scale_gradient

    def forward(self, x: Tensor) -> Tensor:
        if self.scale_gradient:
            return BF.xnor_weight(x)
        dims = tuple(range(1, x.dim()))
        alpha = x.detach().abs().mean(dim=dims, keepdim=True) if dims else x.detach().abs()
        return alpha * BF.sign_ste(x)

    def extra_repr(self) -> str:
        return "" if self.scale_gradient else "scale_gradient=False"


class DoReFaWeightQuantizer(Quantizer):
    """DoReFa k-bit weights (:func:`bnnbench.functional.dorefa_weight`).

    1 bit: ``sign(W) * mean|W|`` (one float per layer); k bits: ``2 quantize_k(tanh(W) / (2
    max|tanh W|) + 1/2) - 1`` (values on a fixed grid in [-1, 1], no stored scale).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = check_bits("method.w_bits", bits, high=32)
        self.precision = bits
        self.scales_per_tensor = 1 if bits == 1 else 0

    def forward(self, x: Tensor) -> Tensor:
        return BF.dorefa_weight(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class DoReFaActivationQuantizer(Quantizer):
    """DoReFa k-bit activations ``quantize_k(clip(x, 0, 1))`` (``functional.dorefa_activation``)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = check_bits("method.a_bits", bits, high=32)
        self.precision = bits

    def forward(self, x: Tensor) -> Tensor:
        return BF.dorefa_activation(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class ABCWeightQuantizer(Quantizer):
    """ABC-Net weights ``sum_i alpha_i B_i`` over M binary bases (``functional.abc_weight``).

    ``channelwise``: one set of M bases and coefficients per output channel. ``alpha_grad``: the
    paper's gradient ``dL/dW = (sum_i alpha_i) dL/dW~`` instead of the plain straight-through.
    Deployed: M binary tensors (M bits per weight) and M float32 coefficients per layer
    (``channelwise``: per output channel).
    """

    def __init__(self, num_bases: int, channelwise: bool = False,
                 alpha_grad: bool = False) -> None:
        super().__init__()
        self.num_bases = check_bits("method.weight_bases", num_bases)
        self.channelwise = bool(channelwise)
        self.alpha_grad = bool(alpha_grad)
        self.precision = num_bases
        self.scales_per_channel = num_bases if self.channelwise else 0
        self.scales_per_tensor = 0 if self.channelwise else num_bases

    def forward(self, x: Tensor) -> Tensor:
        return BF.abc_weight(x, self.num_bases, self.channelwise, self.alpha_grad)

    def extra_repr(self) -> str:
        return (f"num_bases={self.num_bases}, channelwise={self.channelwise}, "
                f"alpha_grad={self.alpha_grad}")


def abc_default_shifts(num: int) -> Tensor:
    """Initial shifts: thresholds ``0.5 - v_n`` at the bin centres ``-1 + (2n - 1) / N`` of [-1, 1].

    With ``betas = 1/N`` the initial ``sum_n beta_n H_{v_n}(x)`` is the N-level uniform quantizer
    of ``clip(x, -1, 1)`` onto ``{-1, -1 + 2/N, ..., 1}``; ``N = 1`` gives ``v = 0.5``, i.e.
    ``sign(x)``.
    """
    centres = -1 + (2 * torch.arange(1, num + 1, dtype=torch.float32) - 1) / num
    return 0.5 - centres


class ABCActivationQuantizer(Quantizer):
    """ABC-Net activations ``sum_n beta_n H_{v_n}(x)`` with learnable ``shifts`` v and ``betas``.

    See :func:`bnnbench.functional.abc_activation` for the forward and the STE gradients. The
    paper learns both (Lin et al. 2017, Sec. 3.2); initialization: :func:`abc_default_shifts`,
    ``betas = 1/N``. Deployed: N binary activation maps (precision N).
    """

    def __init__(self, num_activations: int) -> None:
        super().__init__()
        self.num_activations = check_bits("method.activation_bases", num_activations)
        self.precision = num_activations
        self.shifts = nn.Parameter(abc_default_shifts(num_activations))
        self.betas = nn.Parameter(torch.full((num_activations,), 1.0 / num_activations))

    def forward(self, x: Tensor) -> Tensor:
        return BF.abc_activation(x, self.shifts, self.betas)

    def extra_repr(self) -> str:
        return f"num_activations={self.num_activations}"


class ResidualSignQuantizer(Quantizer):
    """Tang et al.'s m residual binarizations ``sum_i alpha_i H_i`` (``residual_binarize``).

    ``per_sample=False`` (the paper) uses one ``alpha_i`` per activation tensor, i.e. per batch;
    ``True`` one per sample. ``num_bits = 1`` is ``mean|x| * sign(x)``. Deployed: m binary maps.
    The last ``alphas`` are kept in ``last_alphas`` (a buffer-free attribute) for inspection.
    """

    def __init__(self, num_bits: int, per_sample: bool = False) -> None:
        super().__init__()
        self.num_bits = check_bits("method.activation_bits", num_bits)
        self.per_sample = bool(per_sample)
        self.precision = num_bits
        self.last_alphas: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        approx, alphas = BF.residual_binarize(x, self.num_bits, per_sample=self.per_sample)
        self.last_alphas = alphas
        return approx

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, per_sample={self.per_sample}"
