"""Learning-rate schedules the papers use that torch does not name directly."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR, LRScheduler

from bnnbench.errors import BnnbenchError, check_range


def exponential_to(optimizer: Optimizer, lr_end: float, epochs: int) -> ExponentialLR:
    """Exponential decay from the optimizer's lr to ``lr_end`` after ``epochs`` epochs.

    BinaryNet's and BinaryConnect's code: ``LR_decay = (LR_fin / LR_start) ** (1 / num_epochs)``,
    applied once per epoch, so epoch ``e`` (from 0) trains at ``lr_start * LR_decay ** e``.
    The papers' per-dataset schedules (MNIST BinaryNet 3e-3 -> 3e-7 over 1000 epochs; CIFAR-10
    BinaryNet 1e-3 -> 3e-7 over 500; BinaryConnect MNIST 1e-3 -> 3e-6 over 250) are the presets'
    ``optimizer.lr`` and ``scheduler.lr_end`` with ``scheduler.epochs: ${trainer.max_epochs}``:
    the decay spans the run, so a shortened run still ends at ``lr_end``.
    """
    check_range("scheduler.lr_end", lr_end, low=0, low_inclusive=False)
    check_range("scheduler.epochs", epochs, low=1)
    lr_start = optimizer.defaults["lr"]
    return ExponentialLR(optimizer, gamma=(lr_end / lr_start) ** (1.0 / epochs))


class Regimes(LRScheduler):
    """Piecewise-constant lr (and optionally weight decay) by epoch: the Torch "regimes" table.

    ``milestones`` (increasing epochs, from 0) split training into ``len(milestones) + 1``
    regimes; regime ``i`` trains at ``base_lr * factors[i]`` (each parameter group keeps its own
    base lr, so per-layer lr scales survive) and, when ``weight_decays`` is given, with
    ``weight_decay = weight_decays[i]`` in every group. XNOR-Net's ``train.lua`` (Rastegari et al.
    2016, allenai/XNOR-Net) steps lr 1e-2, 5e-3, 1e-3, 5e-4, 1e-4 at epochs 18, 29, 43, 52 with
    weight decay 5e-4 for the first two regimes and 0 after (Adam: lr x 0.1).
    """

    def __init__(self, optimizer: Optimizer, milestones: Sequence[int], factors: Sequence[float],
                 weight_decays: Sequence[float] | None = None, last_epoch: int = -1) -> None:
        milestones, factors = [int(m) for m in milestones], [float(f) for f in factors]
        if len(factors) != len(milestones) + 1:
            raise BnnbenchError(f"scheduler.factors needs one value per regime: "
                                f"{len(milestones) + 1} for {len(milestones)} milestones, got "
                                f"{len(factors)}")
        if any(b <= a for a, b in zip(milestones, milestones[1:])) or (milestones and
                                                                       milestones[0] < 1):
            raise BnnbenchError(f"scheduler.milestones={milestones} must be increasing epochs >= 1")
        if weight_decays is not None and len(weight_decays) != len(factors):
            raise BnnbenchError(f"scheduler.weight_decays needs {len(factors)} values (one per "
                                f"regime), got {len(weight_decays)}")
        for value in factors:
            check_range("scheduler.factors", value, low=0, low_inclusive=False)
        self.milestones = milestones
        self.factors = factors
        self.weight_decays = None if weight_decays is None else [float(w) for w in weight_decays]
        super().__init__(optimizer, last_epoch)

    def regime(self, epoch: int) -> int:
        """Index of the regime epoch ``epoch`` (from 0) trains in."""
        return bisect_right(self.milestones, epoch)

    def get_lr(self) -> list[float]:
        i = self.regime(self.last_epoch)
        if self.weight_decays is not None:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = self.weight_decays[i]
        return [base * self.factors[i] for base in self.base_lrs]


class LinearDecay(LRScheduler):
    """ReActNet's linear decay to 0, per optimizer step: step ``t`` (from 0) of ``T`` trains at
    ``lr_t = lr * (1 - t / T)`` (each group its own base lr; the last step at ``lr / T``).

    ReActNet (Liu et al. 2020, Sec. 4.1: "linear learning rate decay"; the authors'
    ``LambdaLR(lambda step: 1.0 - step / args.epochs)``) steps it once per epoch, *before* each
    epoch, so their epoch ``e`` trains at ``lr (1 - (e + 1) / E)``; here it steps per batch, the
    same line without the one-epoch offset. ``total_steps`` None: the run's optimizer steps
    (:class:`~bnnbench.lit.BNNModule` sets Lightning's ``estimated_stepping_batches``), so a
    shortened run still ends near 0.
    """

    interval = "step"

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None,
                 last_epoch: int = -1) -> None:
        if total_steps is not None:
            check_range("scheduler.total_steps", total_steps, low=1, integer=True)
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """``1 - step / total_steps``, floored at 0 (1 until the total is known)."""
        if self.total_steps is None:
            return 1.0
        return max(0.0, 1.0 - step / self.total_steps)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
