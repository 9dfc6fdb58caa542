"""FlipRatio (Tang et al. 2017 Figure 2) against counts made by hand and by an independent spy."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from torch import nn

from bnnbench.callbacks import FLIP_RATIO_PREFIX, FlipRatio
from bnnbench.train import run
from tests.conftest import FAST


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.bn = nn.BatchNorm1d(2)  # not a weight layer: no curve


def set_weights(net: TwoLayers, fc: list[float], conv: float) -> None:
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor(fc).view(2, 2))
        net.conv.weight.fill_(conv)


def step(callback: FlipRatio, trainer: SimpleNamespace, net: TwoLayers) -> None:
    trainer.global_step += 1
    callback.on_train_batch_end(trainer, net, None, None, 0)


def test_flip_ratio_by_hand():
    """fc: 4 weights, conv: 1. sign(0) = +1 and -0.0 = 0 (bnnbench's binarizers' convention)."""
    net, trainer = TwoLayers(), SimpleNamespace(global_step=0, sanity_checking=False)
    callback = FlipRatio()
    set_weights(net, [1.0, -1.0, 2.0, 0.0], 1.0)
    callback.on_train_start(trainer, net)
    set_weights(net, [-1.0, -1.0, 2.0, 0.0], 1.0)      # fc: 1 of 4 flips; conv: none
    step(callback, trainer, net)
    callback.on_train_batch_end(trainer, net, None, None, 1)  # no optimizer step: not counted
    set_weights(net, [-1.0, 1.0, -2.0, -0.0], -3.0)    # fc: 2 of 4 (0 -> -0.0 is none); conv: 1
    step(callback, trainer, net)
    callback.on_train_epoch_end(trainer, net)
    set_weights(net, [1.0, 1.0, -2.0, 5.0], -3.0)      # fc: 1 of 4; conv: none
    step(callback, trainer, net)
    callback.on_train_epoch_end(trainer, net)
    callback.on_train_epoch_end(trainer, net)          # an epoch without steps: nan
    assert set(callback.curves) == {FLIP_RATIO_PREFIX + "fc", FLIP_RATIO_PREFIX + "conv"}
    fc, conv = callback.curves["flip_ratio/fc"], callback.curves["flip_ratio/conv"]
    assert fc[:2] == [(1 + 2) / (2 * 4), 1 / 4] and conv[:2] == [1 / 2, 0.0]
    assert np.isnan(fc[2]) and np.isnan(conv[2])


def test_flip_ratio_state_survives_a_checkpoint_mid_epoch():
    """Saved after one step of an epoch, loaded into a fresh callback (weights restored): the
    epoch's value equals the uninterrupted one."""
    sequence = [[1.0, -1.0, 2.0, 3.0], [-1.0, -1.0, 2.0, 3.0], [-1.0, 1.0, -2.0, 3.0]]
    net, trainer = TwoLayers(), SimpleNamespace(global_step=0, sanity_checking=False)
    straight = FlipRatio()
    set_weights(net, sequence[0], 1.0)
    straight.on_train_start(trainer, net)
    for weights in sequence[1:]:
        set_weights(net, weights, 1.0)
        step(straight, trainer, net)
    straight.on_train_epoch_end(trainer, net)

    trainer = SimpleNamespace(global_step=0, sanity_checking=False)
    first = FlipRatio()
    set_weights(net, sequence[0], 1.0)
    first.on_train_start(trainer, net)
    set_weights(net, sequence[1], 1.0)
    step(first, trainer, net)
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as in a checkpoint
    resumed = FlipRatio()
    resumed.load_state_dict(state)
    resumed.on_train_start(trainer, net)  # restored weights = sequence[1]
    set_weights(net, sequence[2], 1.0)
    step(resumed, trainer, net)
    resumed.on_train_epoch_end(trainer, net)
    assert resumed.curves == straight.curves
    assert straight.curves["flip_ratio/fc"] == [(1 + 2) / (2 * 4)]


class WeightSpy(pl.Callback):
    """Copies every Linear weight after each optimizer step, with its epoch (an independent
    record: numpy, no code shared with FlipRatio)."""

    snapshots: list[tuple[int, dict[str, np.ndarray]]] = []

    def __init__(self) -> None:
        type(self).snapshots = []
        self._step = -1

    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        weights = {n: m.weight.detach().cpu().numpy().copy()
                   for n, m in pl_module.net.named_modules() if isinstance(m, nn.Linear)}
        type(self).snapshots.append((epoch, weights))

    def on_train_start(self, trainer, pl_module):
        self._step = trainer.global_step
        self._take(trainer, pl_module, -1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self._take(trainer, pl_module, trainer.current_epoch)


def independent_flip_ratios(snapshots: list[tuple[int, dict[str, np.ndarray]]]
                            ) -> dict[str, list[float]]:
    per_epoch: dict[str, dict[int, list[float]]] = {}
    for (_, before), (epoch, after) in zip(snapshots, snapshots[1:]):
        for name in after:
            changed = np.where(before[name] >= 0, 1, -1) != np.where(after[name] >= 0, 1, -1)
            per_epoch.setdefault(name, {}).setdefault(epoch, []).append(float(changed.mean()))
    return {f"flip_ratio/{name}": [float(np.mean(v)) for _, v in sorted(epochs.items())]
            for name, epochs in per_epoch.items()}


@pytest.mark.parametrize("method", ["+method=bnn", "+method=fp"])
def test_flip_ratio_in_metrics_json_equals_an_independent_count(make_cfg, method):
    overrides = [method, *FAST, "trainer.max_epochs=2", "callbacks=flip_ratio",
                 "+callbacks.spy._target_=tests.test_callbacks.WeightSpy", "optimizer.lr=1e-2"]
    record = run(make_cfg(overrides))
    saved = json.loads((Path(HydraConfig.get().runtime.output_dir) / "metrics.json").read_text())
    flips = {k: v for k, v in saved["curves"].items() if k.startswith("flip_ratio/")}
    expected = independent_flip_ratios(WeightSpy.snapshots)
    assert len(WeightSpy.snapshots) == 1 + 2 * 3  # initial + 3 steps in each of 2 epochs
    assert flips.keys() == expected.keys() and len(flips) == 4  # the MLP's 4 Linear layers
    for key, values in expected.items():
        assert flips[key] == pytest.approx(values, rel=1e-12, abs=0), key
    assert any(v > 0 for values in flips.values() for v in values)  # lr 1e-2 flips signs
    assert record.curves == saved["curves"]


@pytest.mark.slow
def test_flip_ratio_curve_survives_resume(make_cfg):
    """2 epochs straight == 1 epoch, then resumed from its last.ckpt to 2 (same curve)."""
    common = ["+method=bnn", *FAST, "callbacks=flip_ratio", "optimizer.lr=1e-2"]
    straight = run(make_cfg([*common, "trainer.max_epochs=2"]))
    run(make_cfg([*common, "trainer.max_epochs=1"]))
    last = Path(HydraConfig.get().runtime.output_dir) / "checkpoints" / "last.ckpt"
    resumed = run(make_cfg([*common, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    flips = {k: v for k, v in straight.curves.items() if k.startswith("flip_ratio/")}
    assert flips and all(len(v) == 2 for v in flips.values())
    assert {k: resumed.curves[k] for k in flips} == flips


class FallingAccuracy(pl.LightningModule):
    """Logs val/top1 = 90, 80, 70, ... : the best epoch is the first, the last one the worst."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def validation_step(self, batch: list[torch.Tensor], _: int) -> None:
        self.log("val/top1", 90.0 - 10.0 * self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)),
                                           batch_size=2)

    val_dataloader = train_dataloader


def test_default_checkpoints_last_is_the_final_epoch_and_best_the_best_epoch(tmp_path):
    """conf/callbacks/default.yaml's checkpoints on a run whose val top-1 falls every epoch:
    best.ckpt holds epoch 0, last.ckpt the final epoch (Lightning 2.6's save_last=true left
    last.ckpt at the best epoch, so tests, resumes and exports read the best epoch instead)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    conf = OmegaConf.load(CONF / "callbacks" / "default.yaml")
    checkpoints = []
    for node in conf.values():
        if node._target_.endswith("ModelCheckpoint"):
            node.dirpath = str(tmp_path)
            checkpoints.append(instantiate(node))
    trainer = pl.Trainer(max_epochs=3, callbacks=checkpoints, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(FallingAccuracy())
    epochs = {p.name: torch.load(p, map_location="cpu", weights_only=False)["epoch"]
              for p in tmp_path.glob("*.ckpt")}
    assert epochs == {"best.ckpt": 0, "last.ckpt": 2}
