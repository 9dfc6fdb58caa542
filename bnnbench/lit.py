"""BNNModule: the one LightningModule. Steps, top-1/top-5, optimizer groups, method hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bnnbench.methods.base import BinarizationMethod
from bnnbench.optimizers import BINARY_GROUP, split_binary_groups, takes_binary_groups
from bnnbench.recipes import distillation_loss

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of examples whose target is among the top-k logits, for each k (k capped at C)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices
    hit = top.eq(target.unsqueeze(-1))
    return [hit[:, : min(k, maxk)].any(dim=-1).sum() for k in ks]


class BNNModule(pl.LightningModule):
    """Trains ``net`` (already converted by ``method``) with the method's loss and hooks.

    With a ``teacher`` (a frozen network), the task loss is ``(1 - kd_weight) * method loss +
    kd_weight * distillation_loss(logits, teacher(x), kd_temperature)``.
    Logged: ``train/loss`` (task loss + regularizer), with a teacher ``train/task`` (the method
    loss) and ``train/kd`` (the distillation term), both before weighting, ``val/top1``,
    ``val/top5``, ``val/loss``, ``test/top1``, ``test/top5``, ``test/loss`` (accuracies in percent).
    Validation and test metrics are torchmetrics states (correct and seen counts, loss sum and
    weight) summed over every batch and, under DDP, over every rank before the division, so the
    numbers are exact for any split of the data across ranks (the datamodule's evaluation loaders
    shard without padding, see :mod:`bnnbench.data.base`). The number of classes comes from the
    datamodule (``num_classes``) when the trainer sets the module up.
    The learning rate of a parameter group is ``optimizer lr * group['lr_scale']`` (default 1).
    With Bop (``optimizer=bop``) each group's binary weights move to a group of their own
    (:func:`bnnbench.optimizers.split_binary_groups`), whose ``lr`` is Bop's ``gamma``.
    A ReduceLROnPlateau scheduler watches the training loss (Tang et al.: "halved once the
    training loss stops decreasing"); a scheduler with ``interval = "step"`` steps after every
    optimizer step (its ``total_steps`` None: the run's, Lightning's estimate); others once per
    epoch.
    """

    def __init__(self, net: nn.Module, method: BinarizationMethod,
                 optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 teacher: nn.Module | None = None, kd_temperature: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.method = method
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # a list, not a submodule: the frozen teacher is not saved in every checkpoint
        self.teacher = [teacher] if teacher is not None else []
        self.kd_temperature = kd_temperature
        self.kd_weight = kd_weight
        self.eval_metrics: nn.ModuleDict | None = None

    def setup(self, stage: str) -> None:
        if self.eval_metrics is not None:
            return
        num_classes = getattr(self.trainer.datamodule, "num_classes", None)
        if not num_classes:  # training from bare loaders (benchmarks): nothing to evaluate
            return
        self.eval_metrics = nn.ModuleDict({split: eval_metrics(num_classes)
                                           for split in ("val", "test")})

    def on_fit_start(self) -> None:
        for teacher in self.teacher:
            teacher.to(self.device).eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = self.method.loss(logits, y)
        if self.teacher:  # knowledge distillation (bnnbench.recipes.distillation_loss)
            with torch.no_grad():
                target = self.teacher[0](x)
            kd = distillation_loss(logits, target, self.kd_temperature)
            # both terms, unweighted, so a report can plot what each contributes
            self.log("train/task", loss, on_step=False, on_epoch=True, batch_size=len(y),
                     sync_dist=True)
            self.log("train/kd", kd, on_step=False, on_epoch=True, batch_size=len(y),
                     sync_dist=True)
            loss = (1 - self.kd_weight) * loss + self.kd_weight * kd
        reg = self.method.regularizer(self.net)
        if reg is not None:
            self.log("train/regularizer", reg, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + reg
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(y), sync_dist=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.after_optimizer_step(self.net)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self.net(x)
        if self.eval_metrics is None:
            raise TypeError("BNNModule evaluates with a datamodule that states num_classes "
                            "(bnnbench.data.base.ImageClassificationData)")
        metrics = self.eval_metrics[stage]
        metrics["loss"].update(self.method.loss(logits, y).detach(), weight=len(y))
        metrics["top1"].update(logits, y)
        metrics["top5"].update(logits, y)
        # logged as Metric objects: Lightning computes them (states reduced across ranks) and
        # resets them at the end of the epoch
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "top1")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        groups = self.method.param_groups(self.net)
        if takes_binary_groups(self.optimizer_factory):  # Bop: binary weights in own groups
            groups = split_binary_groups(groups, self.net, self.method)
        optimizer = self.optimizer_factory([{k: v for k, v in g.items() if k != "lr_scale"}
                                            for g in groups])
        base_lr = optimizer.defaults["lr"]
        for group, spec in zip(optimizer.param_groups, groups):
            if not spec.get(BINARY_GROUP):  # a Bop group's lr is its gamma
                group["lr"] = base_lr * spec.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if getattr(scheduler, "total_steps", 0) is None:  # a per-step schedule over the run
            scheduler.total_steps = int(self.trainer.estimated_stepping_batches)
        config: dict[str, Any] = {"scheduler": scheduler,
                                  "interval": getattr(scheduler, "interval", "epoch")}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = "train/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def eval_metrics(num_classes: int) -> nn.ModuleDict:
    """Top-1 and top-k accuracy in percent (examples whose target is among the k largest logits,
    k = min(5, classes)) and the mean loss weighted by batch size."""
    return nn.ModuleDict({
        "loss": MeanMetric(),
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro") * 100,
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro") * 100,
    })


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def predict(net: nn.Module, loader: Any) -> Tensor:
    """Argmax predictions of ``net`` in eval mode over a loader (used to compare packed models)."""
    net.eval()
    return torch.cat([net(x).argmax(-1) for x, _ in loader])
