"""Learning-rate schedules the papers use that torch does not name directly."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR

from bnnbench.errors import check_range


def exponential_to(optimizer: Optimizer, lr_end: float, epochs: int) -> ExponentialLR:
    """Exponential decay from the optimizer's lr to ``lr_end`` after ``epochs`` epochs.

    BinaryNet's code: lr_decay = (lr_end / lr_start) ** (1 / epochs), applied once per epoch.
    """
    check_range("scheduler.lr_end", lr_end, low=0, low_inclusive=False)
    check_range("scheduler.epochs", epochs, low=1)
    lr_start = optimizer.defaults["lr"]
    return ExponentialLR(optimizer, gamma=(lr_end / lr_start) ** (1.0 / epochs))
