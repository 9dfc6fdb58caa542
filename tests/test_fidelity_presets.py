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


# ------------------------------------------------- the Bi-Real / ReActNet authors' ImageNet recipes
# Values from liuzechun/Bi-Real-net pytorch_implementation/BiReal18_34/train.py (+ run.sh) and
# liuzechun/ReActNet {resnet,mobilenet}/{1_step1,2_step2}/train.py (+ run.sh, 256-epoch lines).
IMAGENET_MEAN_255 = [0.485 * 255, 0.456 * 255, 0.406 * 255]  # transforms.Normalize(mean) on 0..1
IMAGENET_STD_255 = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """The authors' CrossEntropyLabelSmooth (utils.py) in closed form: targets (1 - eps) onehot +
    eps / K, i.e. (1 - eps) * CE + eps * mean over classes of -log p, averaged over the batch."""
    log_p = logits.log_softmax(dim=1)
    ce = -log_p.gather(1, target[:, None]).squeeze(1)
    return ((1 - eps) * ce + eps * (-log_p).mean(dim=1)).mean()


def check_authors_imagenet_data(cfg) -> None:
    assert cfg.data._target_.endswith("ImageNetFFCV") and cfg.data.img_size == 224
    assert cfg.data.train_crop == "rrc"  # RandomResizedCrop(224, scale=(0.08, 1.0))
    assert cfg.data.crop_ratio == pytest.approx(224 / 256)  # Resize(256) -> CenterCrop(224)
    assert list(cfg.data.mean) == pytest.approx(IMAGENET_MEAN_255)
    assert list(cfg.data.std) == pytest.approx(IMAGENET_STD_255)


def check_linear_decay(cfg, lr: float) -> None:
    """LambdaLR(lambda step: 1 - step / epochs): the lr falls linearly to 0 over the run."""
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == lr
    opt = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.scheduler)(opt)
    sched.total_steps = 256
    for _ in range(128):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr / 2)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_the_authors_smoothed_cross_entropy(eps):
    from bnnbench.methods import create_method

    torch.manual_seed(0)
    logits, target = torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    for name in ("bireal", "reactnet", "bnn", "fp"):
        loss = create_method(name, label_smoothing=eps).loss(logits, target)
        torch.testing.assert_close(loss, smoothed_cross_entropy(logits, target, eps))
    plain = torch.nn.functional.cross_entropy(logits, target)
    assert (create_method("bireal", label_smoothing=eps).loss(logits, target) != plain) == (eps > 0)


def test_label_smoothing_needs_the_cross_entropy():
    from bnnbench.errors import BnnbenchError
    from bnnbench.methods import create_method

    with pytest.raises(BnnbenchError, match="method.loss=cross_entropy") as info:
        create_method("bnn", loss="squared_hinge", label_smoothing=0.1)
    assert "\n" not in str(info.value)
    with pytest.raises(BnnbenchError, match="method.label_smoothing"):
        create_method("bnn", label_smoothing=1.5)


def test_bireal_resnet18_imagenet_is_the_authors_pytorch_train_py(make_cfg):
    cfg = make_cfg(["+preset=bireal_resnet18_imagenet"])
    assert cfg.method._target_.endswith("bireal.BiRealNet") and cfg.model.name == "resnet18"
    assert cfg.method.weight_gradient == "code"  # HardBinaryConv: detached scale, clamp STE
    assert cfg.method.label_smoothing == 0.1  # --label_smooth 0.1 (criterion_smooth trains)
    assert cfg.data.batch_size == 512 and cfg.trainer.max_epochs == 256
    assert cfg.optimizer.weight_decay == 0.0  # --weight_decay 0
    assert cfg.get("teacher") is None and cfg.get("recipe") is None  # from scratch, no KD
    check_linear_decay(cfg, 1e-3)
    check_authors_imagenet_data(cfg)
    method = instantiate(cfg.method)
    net = method.convert(create_model("resnet18", in_chans=3, num_classes=10, img_size=32))
    assert len([1 for _, layer in quantized_layers(net) if layer.weight_bits == 1]) == 16
    logits, target = net(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7])
    torch.testing.assert_close(method.loss(logits, target),
                               smoothed_cross_entropy(logits, target, 0.1))


@pytest.mark.parametrize("preset, model, batch, lr", [
    ("reactnet_resnet18_imagenet", "resnet18", 512, 1e-3),  # resnet/run.sh, 256 epochs
    ("reactnet_a_imagenet", "reactnet_a", 256, 5e-4),  # mobilenet/run.sh, 256 epochs
])
def test_reactnet_imagenet_presets_are_the_authors_two_steps(make_cfg, tmp_path, preset, model,
                                                             batch, lr):
    import timm
    from torchvision.models import ResNet34_Weights

    from bnnbench.recipes import stage_config

    cfg = make_cfg([f"+preset={preset}"])
    assert cfg.method._target_.endswith("reactnet.ReActNet") and cfg.model.name == model
    assert cfg.method.weight_gradient == "code"
    assert cfg.data.batch_size == batch and cfg.trainer.max_epochs == 256
    check_linear_decay(cfg, lr)
    check_authors_imagenet_data(cfg)
    # train(): loss = DistributionLoss(student, teacher) alone (T = 1); the smoothed criterion
    # they build with --label_smooth 0.1 never reaches train(), and weighs 0 at kd.weight = 1
    assert (cfg.kd.weight, cfg.kd.temperature, cfg.method.label_smoothing) == (1.0, 1.0, 0.1)
    # teacher: torchvision's resnet34(pretrained=True)
    name = cfg.teacher.removeprefix("timm:")
    teacher = timm.create_model(name, pretrained=False)
    assert teacher.pretrained_cfg["url"] == ResNet34_Weights.IMAGENET1K_V1.url
    # step 1: real weights, weight decay 1e-5; step 2: binary weights from step 1, none
    step1, step2 = stage_config(cfg, 1), stage_config(cfg, 2, tmp_path / "stage1")
    assert step1.method.binary_weights is False and step1.optimizer.weight_decay == 1e-5
    assert step2.method.binary_weights is True and step2.optimizer.weight_decay == 0.0
    assert step2.init == str(tmp_path / "stage1")
    assert step1.teacher == step2.teacher == cfg.teacher
    kwargs = {"width_multiplier": 0.25} if model == "reactnet_a" else {}
    net = instantiate(cfg.method).convert(
        create_model(model, in_chans=3, num_classes=10, img_size=32, **kwargs))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
