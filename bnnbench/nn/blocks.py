"""ConvBlock: conv, BatchNorm, activation and pooling whose order a method may change.

The papers' plain CNNs (BinaryNet's VGG-small, AlexNet, NIN) are stacks of these blocks. The
full-precision order is conv -> bn -> act -> pool. XNOR-Net and ABC-Net reorder a binary block to
bn -> binarize -> conv -> pool (Rastegari et al. 2016, Fig. 3): such a method sets ``order`` and,
because the BatchNorm then normalizes the conv's *input*, replaces ``bn`` with one over
``conv.in_channels`` (see :meth:`ConvBlock.set_order`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

FP_ORDER = ("conv", "bn", "act", "pool")
XNOR_ORDER = ("bn", "act", "conv", "pool")


class ConvBlock(nn.Module):
    """Apply ``conv``, ``bn``, ``act``, ``pool`` (each may be None) in ``order``."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None = None, act: nn.Module | None = None,
                 pool: nn.Module | None = None, order: Sequence[str] = FP_ORDER) -> None:
        super().__init__()
        self.conv, self.bn, self.act, self.pool = conv, bn, act, pool
        self.order = tuple(order)

    def set_order(self, order: Sequence[str]) -> None:
        """Reorder the block; a BatchNorm moved before the conv is rebuilt for the conv's input."""
        order = tuple(order)
        if sorted(order) != sorted(FP_ORDER):
            raise ValueError(f"order must be a permutation of {FP_ORDER}, got {order}")
        bn_before_conv = order.index("bn") < order.index("conv")
        if self.bn is not None and isinstance(self.bn, nn.BatchNorm2d):
            channels = self.conv.in_channels if bn_before_conv else self.conv.out_channels
            if self.bn.num_features != channels:
                self.bn = nn.BatchNorm2d(channels, eps=self.bn.eps, momentum=self.bn.momentum)
        self.order = order

    def forward(self, x: Tensor) -> Tensor:
        for name in self.order:
            module = getattr(self, name)
            if module is not None:
                x = module(x)
        return x

    def extra_repr(self) -> str:
        return f"order={'->'.join(self.order)}"
