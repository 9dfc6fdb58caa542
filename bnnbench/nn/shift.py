"""BinaryNet's shift-based BatchNorm and shift-based AdaMax (Courbariaux et al. 2016, Alg. 3-4).

Both replace multiplications by multiplications with powers of two (binary shifts), using
``AP2(x) = sign(x) * 2^round(log2 |x|)`` (AP2(0) = 0), the power of two nearest to x in log
scale. Training here still runs in floating point; the point is that the deployed arithmetic
could be shifts, and that accuracy survives the approximation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from bnnbench.errors import check_range
from bnnbench.nn.layers import set_submodule


def ap2(x: Tensor) -> Tensor:
    """Nearest power of two in log scale, sign kept: ``sign(x) 2^round(log2|x|)``, ``ap2(0) = 0``.
    """
    mag = torch.exp2(torch.round(torch.log2(x.abs().clamp_min(torch.finfo(x.dtype).tiny))))
    return torch.where(x == 0, torch.zeros_like(x), torch.sign(x) * mag)


class _AP2STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        return ap2(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        return g


def ap2_ste(x: Tensor) -> Tensor:
    """:func:`ap2` with a straight-through (identity) gradient."""
    return _AP2STE.apply(x)


class ShiftBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Shift-based BatchNorm (BinaryNet Algorithm 3), for (N, C) and (N, C, H, W) inputs.

    Training, per channel over the batch (and space):
        ``C(x) = x - mean(x)``;  ``var ~ mean(C(x) * AP2(C(x)))``;
        ``x^ = C(x) * AP2(1 / sqrt(var + eps))``;  ``y = AP2(gamma) * x^ + beta``.
    Evaluation uses the running mean and the running approximate variance, averaged as torch's
    BatchNorm does (``momentum``; ``None``: the cumulative average of every batch). Gradients pass
    straight through every AP2 (identity), elsewhere ordinary autograd.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"ShiftBatchNorm expects a 2-D to 4-D input, got {x.dim()}-D")

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "ShiftBatchNorm":
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        return new

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        use_batch = self.training or not self.track_running_stats or self.running_mean is None
        if use_batch:
            mean = x.mean(dim=dims)
            centred = x - mean.view(shape)
            var = (centred * ap2_ste(centred)).mean(dim=dims)
            if self.training and self.track_running_stats and self.running_mean is not None:
                n = x.numel() / x.shape[1]
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    # torch's convention, which from_batchnorm copies: None = cumulative average
                    momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                                else self.momentum)
                    self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                    self.running_var.mul_(1 - momentum).add_(momentum * var * n / max(n - 1, 1))
        else:
            mean, var = self.running_mean, self.running_var
            centred = x - mean.view(shape)
        xhat = centred * ap2_ste(torch.rsqrt(var + self.eps)).view(shape)
        if self.affine:
            xhat = xhat * ap2_ste(self.weight).view(shape) + self.bias.view(shape)
        return xhat


def replace_batchnorms(model: nn.Module) -> int:
    """Replace every BatchNorm1d/2d of ``model`` by a :class:`ShiftBatchNorm`; returns how many."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for name in names:
        set_submodule(model, name, ShiftBatchNorm.from_batchnorm(model.get_submodule(name)))
    return len(names)


class ShiftAdamax(Optimizer):
    """Shift-based AdaMax (BinaryNet Algorithm 4).

        ``m_t = beta1 m_{t-1} + (1 - beta1) g_t``;   ``v_t = max(beta2 v_{t-1}, |g_t|)``;
        ``theta_t = theta_{t-1} - AP2(lr / (1 - beta1^t)) * m_t * AP2(1 / (v_t + eps))``

    i.e. AdaMax (Kingma & Ba 2015) whose two multiplications/divisions by real numbers become
    multiplications by powers of two. ``weight_decay`` adds ``wd * theta`` to the gradient.
    """

    def __init__(self, params: Iterable[Any], lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        check_range("optimizer.lr", lr, low=0, low_inclusive=False)
        check_range("optimizer.betas[0]", betas[0], low=0, high=1)
        check_range("optimizer.betas[1]", betas[1], low=0, high=1)
        check_range("optimizer.weight_decay", weight_decay, low=0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_inf"] = torch.zeros_like(p)
                state["step"] += 1
                m, u = state["exp_avg"], state["exp_inf"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                torch.maximum(u.mul_(beta2), g.abs(), out=u)
                rate = ap2(torch.tensor(group["lr"] / (1 - beta1 ** state["step"]))).item()
                p.add_(m * ap2(1.0 / (u + group["eps"])), alpha=-rate)
        return loss
