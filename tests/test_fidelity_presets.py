"""Paper presets (issue 10, "Paper presets"): each composes with ``+preset=NAME``, carries the
paper's / authors' settings, and builds on a small geometry. Expected values are written here from
the papers and the authors' scripts (BinaryNet cifar10.py, allenai/XNOR-Net train.lua and
models/*.lua, ABC-Net's ResNet-18 table), never read back from the YAML.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from bnnbench.models import create_model
from bnnbench.nn.layers import quantized_layers


def lrs_per_epoch(cfg, epochs: int, params: list[nn.Parameter] | None = None) -> list[dict]:
    """The (lr, weight_decay) each epoch trains at, stepping the scheduler once per epoch."""
    opt = instantiate(cfg.optimizer)(params or [nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.scheduler)(opt)
    seen = []
    for _ in range(epochs):
        group = opt.param_groups[0]
        seen.append({"lr": group["lr"], "wd": group["weight_decay"]})
        opt.step()
        sched.step()
    return seen


def build(cfg, **geometry) -> nn.Module:
    model_kwargs = {k: v for k, v in cfg.model.items() if k not in ("_target_", "name")}
    model_kwargs.update(geometry.pop("model", {}))
    net = create_model(cfg.model.name, **geometry, **model_kwargs)
    return instantiate(cfg.method).convert(net)


def test_binarynet_cifar10_is_the_authors_cifar10_py(make_cfg):
    cfg = make_cfg(["+preset=binarynet_cifar10"])
    assert cfg.method._target_.endswith("bnn.BinaryNet")
    assert (cfg.method.fp_first, cfg.method.fp_last, cfg.method.stochastic) == (False, False, False)
    assert cfg.method.loss == "squared_hinge" and cfg.method.lr_scale is True
    assert cfg.method.latent_init == "uniform"  # binary_net.py: W = Uniform((-H, H)), H = 1
    assert cfg.model.name == "vgg_small" and list(cfg.model.widths) == [128, 256, 512]
    assert cfg.model.hidden_features == 1024 and cfg.model.dropout == 0.0
    assert cfg.data._target_.endswith("cifar.CIFAR10")
    assert (cfg.data.batch_size, cfg.data.val_size, cfg.data.augment) == (50, 5000, False)
    # pixels 2 x / 255 - 1 = (x / 255 - 0.5) / 0.5
    assert list(cfg.data.mean) == [0.5] * 3 and list(cfg.data.std) == [0.5] * 3
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.trainer.max_epochs == 500
    lrs = [e["lr"] for e in lrs_per_epoch(cfg, 500)]
    decay = (3e-7 / 1e-3) ** (1 / 500)  # cifar10.py: LR_decay = (LR_fin / LR_start) ** (1 / epochs)
    assert lrs[0] == pytest.approx(1e-3) and lrs[250] == pytest.approx(1e-3 * decay**250)
    net = build(cfg, in_chans=3, num_classes=10, img_size=32,
                model={"widths": [8, 16, 32], "hidden_features": 16})
    layers = [layer for _, layer in quantized_layers(net)]
    assert [layer.weight_bits for layer in layers] == [1] * 9  # 6 convs + 3 FC, all binary
    assert [layer.input_bits for layer in layers] == [32] + [1] * 8  # the image stays real
    assert isinstance(net.classifier[-1], nn.BatchNorm1d)  # the output BatchNorm of cifar10.py
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())  # htanh units
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("preset, epochs, lr_start, lr_end", [
    ("binarynet_mnist", 1000, 3e-3, 3e-7),
    ("binarynet_cifar10", 500, 1e-3, 3e-7),
    ("binaryconnect_mnist", 250, 1e-3, 3e-6),
])
@pytest.mark.parametrize("run_epochs", [None, 4])
def test_exponential_schedules_span_the_run(make_cfg, preset, epochs, lr_start, lr_end,
                                            run_epochs):
    """The paper's decay reaches lr_end at the run's last epoch, whatever trainer.max_epochs."""
    overrides = [f"+preset={preset}"] + ([f"trainer.max_epochs={run_epochs}"] if run_epochs else [])
    cfg = make_cfg(overrides)
    total = run_epochs or epochs
    assert cfg.trainer.max_epochs == total
    lrs = [e["lr"] for e in lrs_per_epoch(cfg, total + 1)]
    for epoch in (0, total // 2, total):
        assert lrs[epoch] == pytest.approx(lr_start * (lr_end / lr_start) ** (epoch / total))
    assert lrs[total] == pytest.approx(lr_end)


# XNOR-Net train.lua regimes (epochs from 1): LR 1e-2, 5e-3, 1e-3, 5e-4, 1e-4 starting at epochs
# 1, 19, 30, 44, 53 (Adam: x 0.1); WD 5e-4, 5e-4, 0, 0, 0.
XNOR_REGIMES = [(1, 1e-2, 5e-4), (19, 5e-3, 5e-4), (30, 1e-3, 0.0), (44, 5e-4, 0.0),
                (53, 1e-4, 0.0)]


def torch_regime(epoch_from_1: int) -> tuple[float, float]:
    lr, wd = XNOR_REGIMES[0][1:]
    for start, r_lr, r_wd in XNOR_REGIMES:
        if epoch_from_1 >= start:
            lr, wd = r_lr, r_wd
    return lr, wd


def test_xnor_alexnet_is_the_authors_torch_recipe(make_cfg):
    cfg = make_cfg(["+preset=xnor_alexnet"])
    assert cfg.method._target_.endswith("xnor.XnorNet")
    assert (cfg.method.fp_first, cfg.method.fp_last) == (True, True)
    assert cfg.method.activation_scale is False  # alexnetxnor.lua has no K
    assert cfg.method.mean_center is True and cfg.method.affine_bn is False
    assert cfg.model.name == "alexnet" and cfg.model.dropout == 0.0 and cfg.model.norm == "bn"
    assert cfg.data._target_.endswith("ImageNetFFCV") and cfg.data.batch_size == 800
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optimizer.eps == pytest.approx(1e-8 / 1e9)  # gradParameters:mul(1e+9) before adam
    assert cfg.trainer.max_epochs == 55
    seen = lrs_per_epoch(cfg, 55)
    for epoch in range(55):
        assert seen[epoch]["lr"] == pytest.approx(0.1 * torch_regime(epoch + 1)[0]), epoch
    net = build(cfg, in_chans=3, num_classes=10, img_size=32, model={"fc_features": 32})
    layers = [layer for _, layer in quantized_layers(net)]
    assert [(layer.weight_bits, layer.input_bits) for layer in layers] == [(1, 1)] * 6
    assert type(net.features[0].conv) is nn.Conv2d and type(net.classifier[-1]) is nn.Linear
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bwn_alexnet_is_the_authors_torch_recipe(make_cfg):
    cfg = make_cfg(["+preset=bwn_alexnet"])
    assert cfg.method._target_.endswith("xnor.BinaryWeightNetwork")
    assert cfg.method.mean_center is True and cfg.method.latent_clip == 1.0
    assert cfg.model.name == "alexnet" and cfg.model.dropout == 0.1  # README: -dropout 0.1
    assert cfg.data.batch_size == 128 and cfg.trainer.max_epochs == 55
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    seen = lrs_per_epoch(cfg, 55)
    for epoch in range(55):
        lr, wd = torch_regime(epoch + 1)
        assert seen[epoch] == {"lr": pytest.approx(lr), "wd": wd}, epoch
    net = build(cfg, in_chans=3, num_classes=10, img_size=32, model={"fc_features": 32})
    layers = [layer for _, layer in quantized_layers(net)]
    assert [(layer.weight_bits, layer.input_bits) for layer in layers] == [(1, 32)] * 6
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_abcnet_resnet18_m5n5_is_the_papers_headline_row(make_cfg):
    cfg = make_cfg(["+preset=abcnet_resnet18_m5n5"])
    assert cfg.method._target_.endswith("abcnet.ABCNet")
    assert (cfg.method.weight_bases, cfg.method.activation_bases) == (5, 5)
    assert (cfg.method.fp_first, cfg.method.fp_last) == (True, True)
    assert cfg.model.name == "resnet18" and cfg.data._target_.endswith("ImageNetFFCV")
    assert cfg.data.img_size == 224
    net = build(cfg, in_chans=3, num_classes=10, img_size=32)
    layers = [layer for _, layer in quantized_layers(net)]
    # 16 3x3 convs of the basic blocks + 3 projection shortcuts, stem and fc stay FP
    assert len(layers) == 19
    assert {(layer.weight_bits, layer.input_bits) for layer in layers} == {(5, 5)}
    assert type(net.conv1) is nn.Conv2d and type(net.fc) is nn.Linear
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
