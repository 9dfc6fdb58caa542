"""Lightning callbacks: :class:`EpochRecorder` (every run's per-epoch curves and epoch times, the
numbers metrics.json keeps), :class:`BatchNormRecalibration` (``bn_recalibration=<batches>``)
and the optional ones a run switches on from the ``callbacks/`` config group.

:class:`FlipRatio` records the statistic of Tang, Hua, Wang 2017 ("How to Train a Compact Binary
Neural Network with High Accuracy?", AAAI), Section "Learning rate" and Figure 2: how often the
*signs* of the latent real-valued weights change during training. A binary network uses only
those signs, so a high learning rate that flips many of them at every step makes training
unstable; Figure 2 compares BNN and full-precision networks per layer and learning rate.
The definition follows larq's ``larq.metrics.FlipRatio`` (the per-layer ``flip_ratio`` metric of
its quantized layers): the share of values that changed since the previous optimizer step,
averaged over the steps of an epoch.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

FLIP_RATIO_PREFIX = "flip_ratio/"


def weight_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and Conv layer of ``net`` by its module name (bnnbench's binary layers are
    subclasses of both; full-precision first/last layers and FP networks count too, so a BNN's
    curves and its float reference's can be compared layer for layer as in Figure 2)."""
    return {name: module for name, module in net.named_modules()
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))}


def positive_signs(weight: Tensor) -> Tensor:
    """``sign(W) = +1`` as a bool tensor, with sign(0) = +1 as every bnnbench binarizer (and
    -0.0 counts as 0)."""
    return weight.detach() >= 0


class FlipRatio(pl.Callback):
    """Per weight layer ``l`` and training epoch ``e``, the mean share of latent weights whose
    sign changed at an optimizer step::

        flip_ratio_l(e) = 1/|S_e| * sum_{s in S_e} 1/n_l * sum_i [sign(W_i^(s)) != sign(W_i^(s-1))]

    where ``S_e`` are the optimizer steps of epoch ``e``, ``W^(s)`` the layer's latent weights
    after step ``s`` (after the method's clipping), ``n_l`` its number of weights, and ``W^(s-1)``
    for the epoch's first step is the weight after the previous epoch's last step (the initial
    weights in epoch 0). larq's metric drops that first step of each epoch (its count is reset);
    here every step counts. Batches without an optimizer step (gradient accumulation) are not
    steps. A curve ``flip_ratio/<layer>`` (one value per epoch, a fraction in [0, 1]) joins the
    run's curves in metrics.json; the counts so far are saved in each checkpoint, so a resumed run
    keeps its curve (the previous signs are re-read from the restored weights).
    """

    def __init__(self) -> None:
        self.curves: dict[str, list[float]] = {}
        self._flips: dict[str, Tensor] = {}  # sign changes summed over this epoch's steps
        self._steps = 0  # optimizer steps so far this epoch
        self._signs: dict[str, Tensor] = {}  # signs after the last counted step
        self._last_step = -1

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"curves": {k: list(v) for k, v in self.curves.items()},
                "flips": {k: int(v) for k, v in self._flips.items()}, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curves = {k: list(v) for k, v in state["curves"].items()}
        self._flips = {k: torch.tensor(v, dtype=torch.int64) for k, v in state["flips"].items()}
        self._steps = int(state["steps"])

    # ---------------------------------------------------------------------------- hooks
    @staticmethod
    def _layers(pl_module: pl.LightningModule) -> dict[str, nn.Module]:
        return weight_layers(getattr(pl_module, "net", pl_module))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after a resume the weights are the checkpoint's: the next step compares with them
        self._signs = {name: positive_signs(layer.weight)
                       for name, layer in self._layers(pl_module).items()}
        for name, signs in self._signs.items():
            prefix = FLIP_RATIO_PREFIX + name
            self.curves.setdefault(prefix, [])
            self._flips[name] = self._flips.get(name, torch.zeros((), dtype=torch.int64)).to(
                signs.device)
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # accumulating gradients: no step yet
            return
        self._last_step = trainer.global_step
        for name, layer in self._layers(pl_module).items():
            signs = positive_signs(layer.weight)
            # stays on the device: no synchronisation per step
            self._flips[name] += torch.count_nonzero(signs != self._signs[name])
            self._signs[name] = signs
        self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, layer in self._layers(pl_module).items():
            flips = int(self._flips[name])
            ratio = flips / (layer.weight.numel() * self._steps) if self._steps else math.nan
            self.curves[FLIP_RATIO_PREFIX + name].append(ratio)
            self._flips[name].zero_()
        self._steps = 0


class EpochRecorder(pl.Callback):
    """Collects per-epoch curves (train loss, val metrics, learning rate) and epoch wall times.

    The terms of a composite training loss get curves of their own when the run logs them:
    ``train/task`` (the method's loss) and ``train/kd`` (the distillation term) with a teacher,
    ``train/regularizer`` with a method's regularizer.
    """

    KEYS = ("train/loss", "val/loss", "val/top1", "val/top5")
    TERMS = ("train/task", "train/kd", "train/regularizer")

    def __init__(self) -> None:
        self.curves: dict[str, list[float]] = {k: [] for k in (*self.KEYS, "lr")}
        self.epoch_time_s: list[float] = []
        self._start = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Saved in each checkpoint: a resumed run's record holds every epoch's curves."""
        return {"curves": self.curves, "epoch_time_s": self.epoch_time_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curves = {k: list(v) for k, v in state["curves"].items()}
        self.epoch_time_s = list(state["epoch_time_s"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epoch_time_s.append(round(time.perf_counter() - self._start, 4))
        metrics = trainer.callback_metrics
        for key in self.KEYS:
            value = metrics.get(key)
            self.curves[key].append(float(value) if value is not None else float("nan"))
        for key in self.TERMS:  # logged every epoch or never (a teacher is set for the run)
            if metrics.get(key) is not None:
                self.curves.setdefault(key, []).append(float(metrics[key]))
        self.curves["lr"].append(float(trainer.optimizers[0].param_groups[0]["lr"]))


# ------------------------------------------------------------------------------------- precise BN
_NORMS = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave the global RNGs (torch, CUDA, numpy, random) as they were: a recalibration draws a
    shuffled batch order and dropout masks, and must not change the training that follows."""
    torch_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def recalibrate_batchnorm(net: nn.Module, inputs: Iterator[Tensor], batches: int) -> int:
    """Recompute every BatchNorm's running statistics of ``net`` from up to ``batches`` input
    batches; returns how many batches were used (0 leaves the statistics untouched).

    "Precise BN" (``torch.optim.swa_utils.update_bn`` does the same after SWA): each BatchNorm's
    ``running_mean``/``running_var`` become the plain average over the batches of the batch mean
    and the unbiased batch variance that training mode computes, ``mu = 1/B sum_b mu_b``,
    ``var = 1/B sum_b var_b`` (momentum ``None``: PyTorch's cumulative average), instead of
    the exponential average training leaves, whose weights lag behind the latest weights and,
    after ``s`` steps at momentum ``m``, still give the initial ``(0, 1)`` the weight
    ``(1 - m)^s``. Layers run in training mode without gradients; each BatchNorm's momentum and
    the network's mode are restored afterwards.
    """
    norms = [m for m in net.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(),
              m.num_batches_tracked.clone()) for m in norms]
    was_training = net.training
    used = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        with torch.no_grad():
            for x in inputs:
                if used >= batches:
                    break
                net(x)
                used += 1
    finally:
        for m, momentum, mean, var, count in saved:
            m.momentum = momentum
            if used == 0:  # no data: keep what training left rather than the reset (0, 1)
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        net.train(was_training)
    return used


class BatchNormRecalibration(pl.Callback):
    """At the end of every training epoch, before its validation: :func:`recalibrate_batchnorm`
    over the first ``batches`` training batches (at most the run's ``limit_train_batches``; in
    the loader's order, with the global RNGs restored afterwards, so training draws what it would
    have drawn without it).

    Why: a short run leaves running statistics far from the batch statistics the network was
    trained with (few steps at momentum 0.1, while the weights and a method's learnable scales
    and shifts still move), and eval mode then scores another network. The statistics are
    recomputed once per epoch, before the epoch's checkpoints are saved, and only there: the
    validation curve, ``last.ckpt``/``best.ckpt``, the test split (scored on ``last.ckpt``),
    ``evaluate`` and ``export`` all see the same network. ``metrics.json`` records
    ``extra.bn_recalibration``. Under DDP every rank reads the same (unsharded) batches.
    """

    def __init__(self, batches: int) -> None:
        self.batches = int(batches)
        self.used = 0
        self._done_this_epoch = False

    def _inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Tensor]:
        loader = None
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_dataloader"):
            with contextlib.suppress(Exception):  # no train split (e.g. a test-only module)
                loader = datamodule.train_dataloader()
        if loader is None:
            return iter(())
        device = pl_module.device
        return (batch[0].to(device) for batch in loader)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = self.batches
        limit = getattr(trainer, "num_training_batches", math.inf)
        if isinstance(limit, (int, float)) and 0 < limit < batches:  # limit_train_batches
            batches = int(limit)
        with preserved_rng(), trainer.precision_plugin.forward_context():
            self.used = recalibrate_batchnorm(pl_module.net, self._inputs(trainer, pl_module),
                                              batches)
        self._done_this_epoch = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._done_this_epoch = False

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._done_this_epoch:  # an epoch without validation (check_val_every_n_epoch)
            self._run(trainer, pl_module)
