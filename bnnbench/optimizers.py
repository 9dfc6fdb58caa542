"""Optimizers beyond torch's: Bop (Helwegen et al. 2019), the latent-free binary optimizer.

Bop ("Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization",
Helwegen, Widdicombe, Geiger, Liu, Cheng, Nusselder, NeurIPS 2019, arXiv:1906.02107, Algorithm 2;
reference implementation: larq's ``larq.optimizers.Bop``). A binary weight ``w`` in {-1, +1} has
no latent real value; Bop keeps an exponential moving average of its gradient and flips it when
that average is strong enough and points the way a flip goes:

    ``m <- (1 - gamma) m + gamma g``                       (``g = dL/dw``, ``m`` starts at 0)
    ``w <- -w``  where ``|m| > tau`` and ``sign(m) == sign(w)``,   else ``w`` stays

(``sign(m) == sign(w)`` with ``|m| > tau`` is ``m w > tau`` for ``|w| = 1``: a positive gradient
on ``+1`` says the loss falls as ``w`` decreases.) ``gamma`` is the adaptivity rate, ``tau`` the
threshold (the paper's ImageNet runs: ``gamma = 1e-4``, ``tau = 1e-8``). Every other parameter
(BatchNorm, scales, shifts, the real first and last layers) is trained by Adam, as larq's Bop
wraps a real-valued optimizer.

Which parameters are binary: the latent weights of a method's binary layers whose weight
quantizer is a sign of the weight, possibly times a per-channel or per-layer ``mean|W|`` (1 when
every weight is +-1), with a gradient that reaches ``|W| = 1`` (:func:`binary_weights`). The
method's optimizer groups (``param_groups``: lr scales, weight decay) are split into their binary
and their real parameters (:func:`split_binary_groups`); a binary group ignores ``lr_scale`` and
``weight_decay`` (a flip has no step size; decay towards 0 has no meaning for +-1). ``g`` is
the gradient w.r.t. the binary weight: the gradient through XNOR-Net's ``mean|W|`` scale is
stopped for Bop's weights, as larq's ``MagnitudeAwareSign`` does (:func:`stop_scale_gradients`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.nn.layers import quantized_layers
from bnnbench.nn.modern_layers import MagnitudeSignQuantizer
from bnnbench.nn.paper_quantizers import DoReFaWeightQuantizer, ScaledSignQuantizer
from bnnbench.nn.quantizers import SignQuantizer

BINARY_GROUP = "binary"  # the param-group key that marks Bop's flipped weights


def _pm1(x: Tensor) -> Tensor:
    """sign with sign(0) = +1 (bnnbench's convention for binary values)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class Bop(Optimizer):
    """Bop for the groups marked ``binary: True``, Adam (torch's, L2 weight decay) for the rest.

    Args:
        params: parameters or groups; a group with ``binary: True`` holds binary weights.
        lr: Adam's learning rate for the real parameters.
        betas, eps, weight_decay: Adam's, for the real parameters.
        threshold: ``tau``, the flip threshold on ``|m|``.
        gamma: the adaptivity rate. A binary group keeps it as its ``lr``, so a learning-rate
            scheduler scales ``gamma`` the way it scales Adam's lr (the paper decays ``gamma``
            as one decays a learning rate).

    Constructing the optimizer sets each binary weight to its sign (+1 at 0): Bop's weights are
    +-1 from the first step on, and ``mean|W|`` scales (XNOR-Net, Bi-Real Net) are 1.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, threshold: float = 1e-8,
                 gamma: float = 1e-4) -> None:
        check_range("optimizer.threshold", threshold, low=0)
        check_range("optimizer.gamma", gamma, low=0, high=1, low_inclusive=False)
        check_range("optimizer.weight_decay", weight_decay, low=0)
        check_range("optimizer.eps", eps, low=0)
        for i, beta in enumerate(betas):
            check_range(f"optimizer.betas[{i}]", beta, low=0, high=1)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        threshold=threshold, gamma=gamma, binary=False)
        super().__init__(params, defaults)
        with torch.no_grad():
            for group in self.param_groups:
                if group[BINARY_GROUP]:
                    group["lr"] = group["gamma"]
                    for p in group["params"]:
                        p.copy_(_pm1(p))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group[BINARY_GROUP]:
                self._flip(group)
            else:
                self._adam(group)
        return loss

    def _flip(self, group: dict[str, Any]) -> None:
        gamma, tau = group["lr"], group["threshold"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "m" not in state:
                state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m = state["m"]
            m.mul_(1 - gamma).add_(p.grad, alpha=gamma)
            w = _pm1(p)
            flip = (m.abs() > tau) & (_pm1(m) == w)
            p.copy_(torch.where(flip, -w, w))

    def _adam(self, group: dict[str, Any]) -> None:
        """torch.optim.Adam's update (no amsgrad): ``g += wd * p``; ``m, v`` moving averages;
        ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if group["weight_decay"]:
                grad = grad.add(p, alpha=group["weight_decay"])
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
            p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1 ** t))


def takes_binary_groups(factory: Any) -> bool:
    """Whether an optimizer factory (a class, or Hydra's ``functools.partial`` of one) is Bop,
    which needs the binary weights in groups of their own."""
    target = getattr(factory, "func", factory)
    return isinstance(target, type) and issubclass(target, Bop)


def binary_weights(net: nn.Module, method: Any = None) -> list[nn.Parameter]:
    """The latent weights Bop flips: those of the binary layers whose weight quantizer is a sign
    (BinaryNet, BinaryConnect, Tang, XNOR-Net++), ``mean|W| sign(W)`` (XNOR-Net, BWN, DoReFa
    1 bit) or Bi-Real/ReActNet's magnitude-aware sign with the gradient ``code`` (the ``paper``
    gradient is 0 at ``|W| = 1``, where Bop's weights live). Anything else is refused with one
    line: multi-bit or multi-basis weights, stochastic signs, methods without binary weights.
    """
    name = getattr(method, "name", "?")
    if getattr(method, "mean_center", False):
        raise BnnbenchError("optimizer=bop keeps the binary weights at +-1, and "
                            "method.mean_center=true moves them: set method.mean_center=false")
    found = []
    for layer_name, layer in quantized_layers(net):
        quantizer = layer.weight_quantizer
        if quantizer.precision >= 32:
            continue
        if isinstance(quantizer, SignQuantizer) and quantizer.stochastic:
            raise BnnbenchError("optimizer=bop flips deterministic signs; method.stochastic=true "
                                "samples them from latent weights: set method.stochastic=false")
        if isinstance(quantizer, MagnitudeSignQuantizer) and quantizer.gradient != "code":
            raise BnnbenchError(
                f"optimizer=bop: method {name}'s weight_gradient={quantizer.gradient} is 0 at "
                "|W| = 1, where Bop's weights live, so nothing would flip: set "
                "method.weight_gradient=code")
        sign_like = isinstance(quantizer, (SignQuantizer, ScaledSignQuantizer,
                                           MagnitudeSignQuantizer)) or (
            isinstance(quantizer, DoReFaWeightQuantizer) and quantizer.bits == 1)
        if not sign_like:
            raise BnnbenchError(
                f"optimizer=bop flips sign weights; method {name}'s layer {layer_name} has "
                f"{type(quantizer).__name__} weights ({quantizer.precision} bits): use "
                "optimizer=adam, or a method with sign weights (bnn, binaryconnect, xnor, bwn, "
                "xnorpp, tang, bireal, reactnet, dorefa with w_bits=1)")
        found.append(layer.weight)
    if not found:
        raise BnnbenchError(
            f"optimizer=bop flips binary weights and method {name} has none (full-precision "
            "weights; reactnet's binary_weights=false is one such stage): use optimizer=adam")
    return found


def stop_scale_gradients(net: nn.Module) -> None:
    """Stop the gradient through the ``mean|W|`` scale of XNOR-Net/BWN weights
    (:class:`~bnnbench.nn.paper_quantizers.ScaledSignQuantizer`, ``scale_gradient=False``), as
    larq's ``MagnitudeAwareSign`` does for its Bop-trained kernels: Bop's ``m`` then averages
    ``g = dL/dsign(W)`` (``alpha = 1`` at ``|W| = 1``) and not ``g + sign(W) / n * sum g
    sign(W)``, the derivative of the scale that +-1 weights hold fixed at 1. The other sign
    quantizers Bop takes have no gradient through a scale already (BinaryNet's sign, DoReFa's
    1-bit ``E``, Bi-Real/ReActNet's ``code`` gradient)."""
    for _, layer in quantized_layers(net):
        if isinstance(layer.weight_quantizer, ScaledSignQuantizer):
            layer.weight_quantizer.scale_gradient = False


def split_binary_groups(groups: list[dict[str, Any]], net: nn.Module,
                        method: Any = None) -> list[dict[str, Any]]:
    """A method's optimizer groups with each group's binary weights (:func:`binary_weights`)
    moved into a group of their own marked ``binary: True`` (after its group, order kept);
    the real parameters keep their group's settings. The binary layers' weight gradients
    become Bop's (:func:`stop_scale_gradients`)."""
    binary = {id(p) for p in binary_weights(net, method)}
    stop_scale_gradients(net)
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        real = [p for p in params if id(p) not in binary]
        flipped = [p for p in params if id(p) in binary]
        if real:
            out.append({**group, "params": real})
        if flipped:
            out.append({"params": flipped, BINARY_GROUP: True})
    return out
