"""Every registered method, parametrized over the registry (timm style), and each paper's specifics.

A new method file + config is tested by the generic tests with no new test code; its expected
parameter overhead goes in EXTRA_PARAMS.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from torch import nn

from bnnbench import functional as BF
from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method, get_method_class, list_methods
from bnnbench.methods.base import layers_to_binarize
from bnnbench.models import create_model
from bnnbench.models.registry import INPUT_SHAPE_ATTR
from bnnbench.nn.blocks import XNOR_ORDER, ConvBlock
from bnnbench.nn.layers import is_quantized, quantized_layers
from bnnbench.nn.paper_layers import GradQuantLinear, Scale, XnorConv2d, XnorLinear
from bnnbench.nn.shift import ShiftAdamax, ShiftBatchNorm, ap2
from bnnbench.train import run
from tests.conftest import CONF, FAST, RESNET18_FAST

METHODS = list_methods()
MLP_KW = dict(hidden_features=64)


def build(model: str) -> nn.Module:
    """The host architectures: the shipped mlp and resnet18 (MNIST geometry) and a plain CNN."""
    if model == "cnn":  # any nn.Module made of Conv2d / BatchNorm / ReLU / Linear
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, 10))
    if model == "blocks":  # the lead's reorderable ConvBlock stacks (VGG/NIN-style models)
        return nn.Sequential(
            ConvBlock(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            ConvBlock(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.MaxPool2d(2)),
            ConvBlock(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.MaxPool2d(2)),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    kw = MLP_KW if model == "mlp" else {}
    return create_model(model, in_chans=1, num_classes=10, img_size=28, **kw)


def build_sized(model: str) -> nn.Module:
    """:func:`build` with the input size recorded, as create_model does (XNOR-Net++ reads it)."""
    net = build(model)
    setattr(net, INPUT_SHAPE_ATTR, (1, 28, 28))
    return net


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def binary_names(net: nn.Module) -> set[str]:
    """Names of quantized layers (a layer wrapped with Tang's scale layer keeps its own name)."""
    return {name.removesuffix(".layer") for name, layer in quantized_layers(net)
            if is_quantized(layer)}


# parameters a method adds to a host model with its default knobs; everything else adds none
EXTRA_PARAMS = {
    # binary layers (mlp 2 hidden Linear; resnet18 16 3x3 + 3 downsample convs; cnn 3; blocks 2),
    # each with N = 3 shifts and 3 betas; XNOR/ABC-Net give a binary layer that reads no
    # BatchNorm output its own BN (2 per input channel): resnet18's 8 block conv1 (64 + 64 + 64 +
    # 128 + 128 + 256 + 256 + 512) and 3 downsample convs (64 + 128 + 256) read the residual sum;
    # cnn's Linear reads the flattened 16 x 6 x 6 map; the first binary layer after the FP first
    # layer's BN -> ReLU (mlp 64, cnn 8) and cnn's conv after BN -> ReLU -> MaxPool (8) too
    ("abcnet", "mlp"): 2 * 6 + 2 * 64, ("abcnet", "resnet18"): 19 * 6 + 2 * 1920,
    ("abcnet", "cnn"): 3 * 6 + 2 * 576 + 2 * 16, ("xnor", "resnet18"): 2 * 1920,
    ("xnor", "cnn"): 2 * 576 + 2 * 16, ("xnor", "mlp"): 2 * 64,
    # ConvBlocks reordered to bn -> act -> conv rebuild the BatchNorm over the conv's input:
    # block 2's BatchNorm goes from 16 to 8 channels (-16 parameters); the FP Linear, which read
    # the last binary block's raw output, gets BN -> ReLU over its 16 x 7 x 7 inputs
    ("abcnet", "blocks"): 2 * 6 - 16 + 2 * 784, ("xnor", "blocks"): -16 + 2 * 784,
    # channel-wise PReLU slopes (mlp 3 x 64; resnet18 64 + 2 * (2*64 + 2*128 + 2*256 + 2*512);
    # cnn 8 + 8 + 16 + 32; blocks 8 + 16 + 16) + the scale layer after the binary last layer;
    # mlp: the output BatchNorm (2 x 10) goes, a bias (10) on the last layer replaces its shift
    ("tang", "mlp"): 3 * 64 + 1 - 2 * 10 + 10, ("tang", "resnet18"): 64 + 2 * 1920 + 1,
    ("tang", "cnn"): 64 + 1, ("tang", "blocks"): 40 + 1,
    # ReActNet: per binary unit an RSign shift (input channels) and an RPReLU (3 x output
    # channels); resnet18: 16 units, layer1 4 x (64 + 3*64), layer2 (64 + 3*128) + 3 x (128 +
    # 3*128), layer3 (128 + 3*256) + 3 x (256 + 3*256), layer4 (256 + 3*512) + 3 x (512 + 3*512)
    ("reactnet", "mlp"): 2 * (64 + 3 * 64),
    ("reactnet", "resnet18"): 4 * 256 + 448 + 3 * 512 + 896 + 3 * 1024 + 1792 + 3 * 2048,
    ("reactnet", "cnn"): (8 + 24) + (8 + 48) + (576 + 96), ("reactnet", "blocks"): 56 + 64,
    # XNOR-Net++ (strong-baseline units): per binary layer Gamma (o + h_out + w_out per conv, o
    # per Linear), a PReLU slope per output channel and a BatchNorm over its input (2 x c_in);
    # the host's BatchNorm after it goes (-2 x o, where it had one). resnet18 on 28 x 28, maps
    # 28, 14, 7, 4; downsample real: layer1 4 x (120 + 64); layer2 (156 + 128 + 128 - 256) +
    # 3 x (156 + 128); layer3 (270 + 256 + 256 - 512) + 3 x (270 + 256); layer4 (520 + 512 +
    # 512 - 1024) + 3 x (520 + 512). cnn: conv 8->8 (64 + 8), conv 8->16 on 6 x 6 (28 + 16 + 16 -
    # 32), Linear 576->32 (32 + 32 + 1152 - 64); blocks: conv 8->16 (72 + 16 + 16 - 32), conv
    # 16->16 on 14 x 14 (44 + 16 + 32 - 32)
    ("xnorpp", "mlp"): 2 * (64 + 64),
    ("xnorpp", "resnet18"): 4 * 184 + 156 + 3 * 284 + 270 + 3 * 526 + 520 + 3 * 1032,
    ("xnorpp", "cnn"): 72 + 28 + 1152,
    ("xnorpp", "blocks"): (72 + 16 + 16 - 32) + (44 + 16 + 32 - 32),
}


@pytest.mark.parametrize("method", METHODS)
def test_method_registry_matches_the_config_files(method):
    assert sorted(p.stem for p in (CONF / "method").glob("*.yaml")) == METHODS
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "method" / f"{method}.yaml")
    cls = get_class(cfg.method._target_)
    assert cls is get_method_class(method) and cls.name == method
    assert cls.__doc__ and cls.paper and cls.binarizes
    assert isinstance(instantiate(cfg.method), cls)


@pytest.mark.parametrize("model", ["mlp", "resnet18", "cnn", "blocks"])
@pytest.mark.parametrize("method", METHODS)
def test_convert_binarizes_the_right_layers(method, model):
    torch.manual_seed(0)
    net = build_sized(model)
    before = count(net)
    m = create_method(method)
    expected = set() if method == "fp" else set(
        layers_to_binarize(net, m.fp_first, m.fp_last, m.fp_shortcut))
    net = m.convert(net)
    assert binary_names(net) == expected
    assert count(net) - before == EXTRA_PARAMS.get((method, model), 0)
    if model == "resnet18":  # numerics of resnet18 are covered by the short fit below
        return
    x = torch.randn(4, 1, 28, 28)
    net.train()
    out = net(x)
    assert out.shape == (4, 10)
    loss = m.loss(out, torch.arange(4))
    reg = m.regularizer(net)
    (loss if reg is None else loss + reg).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()
    assert torch.isfinite(net(x)).all()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "resnet18"])
@pytest.mark.parametrize("method", METHODS)
def test_short_fit_has_no_nan(make_cfg, method, model):
    overrides = [f"+method={method}",
                 *(RESNET18_FAST if model == "resnet18" else [f"model={model}", *FAST])]
    record = run(make_cfg(overrides))
    assert record.method == method
    assert all(math.isfinite(v) for v in record.curves["train/loss"])
    assert math.isfinite(record.test_top1) and 0 <= record.test_top1 <= 100


# --- bad knobs fail before training, one line, naming the key ------------------------------------

BAD_KNOBS = [
    ("dorefa", {"w_bits": 0}, "method.w_bits"),
    ("dorefa", {"a_bits": 33}, "method.a_bits"),
    ("dorefa", {"g_bits": 1.5}, "method.g_bits"),
    ("abcnet", {"weight_bases": 0}, "method.weight_bases"),
    ("abcnet", {"activation_bases": -1}, "method.activation_bases"),
    ("abcnet", {"activation": "swish"}, "method.activation"),
    ("xnor", {"activation": "sigmoid"}, "method.activation"),
    ("xnor", {"activation": "relu"}, "method.activation"),
    ("xnor", {"latent_clip": 0}, "method.latent_clip"),
    ("tang", {"activation": "htanh"}, "method.activation"),
    ("tang", {"activation_bits": 0}, "method.activation_bits"),
    ("tang", {"bipolar_lambda": -1.0}, "method.bipolar_lambda"),
    ("tang", {"scale_init": 0.0}, "method.scale_init"),
    ("binaryconnect", {"latent_clip": -1.0}, "method.latent_clip"),
    ("bwn", {"loss": "hinge"}, "method.loss"),
]


@pytest.mark.parametrize("method, knobs, key", BAD_KNOBS)
def test_bad_knob_is_one_line_error(method, knobs, key):
    with pytest.raises(BnnbenchError, match=key.replace(".", r"\.")) as info:
        create_method(method, **knobs)
    assert "\n" not in str(info.value)


def _causes(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__


def test_bad_knob_fails_before_training(make_cfg):
    from hydra.core.hydra_config import HydraConfig

    with pytest.raises(Exception) as info:
        run(make_cfg(["+method=abcnet", "method.weight_bases=0", *FAST]))
    assert any(isinstance(e, BnnbenchError) for e in _causes(info.value))
    assert not (Path(HydraConfig.get().runtime.output_dir) / "checkpoints").exists()


def test_cli_bad_knob_is_one_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench", "+method=dorefa", "method.a_bits=0",
         f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, text=True, capture_output=True,
        timeout=300)
    assert proc.returncode != 0
    assert "method.a_bits=0 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- each paper's specifics -----------------------------------------------------------------------

def _binary(net: nn.Module) -> list[nn.Module]:
    return [layer for _, layer in quantized_layers(net) if is_quantized(layer)]


def test_binaryconnect_binary_weights_real_inputs_every_layer():
    net = create_method("binaryconnect").convert(build("mlp"))
    layers = _binary(net)
    assert len(layers) == 4  # first and last included, as in the paper
    assert all(layer.weight_bits == 1 and layer.input_bits == 32 for layer in layers)
    assert not any(isinstance(m, nn.Hardtanh) for m in net.modules())
    w = layers[1].quantized_weight()
    assert set(w.unique().tolist()) == {-1.0, 1.0}
    m = create_method("binaryconnect", lr_scale=True)
    groups = m.param_groups(net)
    assert len(groups) == 1 + 4 and all("lr_scale" in g for g in groups[1:])
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_binaryconnect_stochastic_and_latent_clip():
    m = create_method("binaryconnect", stochastic=True)
    net = m.convert(build("mlp"))
    layer = _binary(net)[1]
    with torch.no_grad():
        layer.weight.fill_(0.0)  # p(+1) = 1/2
    layer.train()
    frac = (layer.quantized_weight() > 0).float().mean().item()
    assert 0.4 < frac < 0.6
    layer.eval()
    assert (layer.quantized_weight() == 1).all()  # evaluation: deterministic sign
    with torch.no_grad():
        layer.weight.fill_(3.0)
    m.after_optimizer_step(net)
    assert layer.weight.max().item() == 1.0


def test_bwn_and_xnor_scales():
    torch.manual_seed(0)
    net = create_method("bwn").convert(build("cnn"))
    conv = _binary(net)[0]
    w = conv.quantized_weight()
    torch.testing.assert_close(w, BF.xnor_weight(conv.weight))
    assert conv.input_bits == 32 and conv.weight_quantizer.scales_per_channel == 1

    for scale in (True, False):
        net = create_method("xnor", activation_scale=scale).convert(build("cnn"))
        conv = next(layer for layer in _binary(net) if isinstance(layer, XnorConv2d))
        x = torch.randn(2, conv.in_channels, 9, 9)
        y = conv(x)
        ref = nn.functional.conv2d(BF.sign_ste(x), BF.xnor_weight(conv.weight), None,
                                   conv.stride, conv.padding)
        if scale:
            ref = ref * BF.xnor_activation_scale(x, conv.kernel_size, conv.stride, conv.padding)
        ref = ref + (conv.bias.view(1, -1, 1, 1) if conv.bias is not None else 0)
        torch.testing.assert_close(y, ref)
        fc = next(layer for layer in _binary(net) if isinstance(layer, XnorLinear))
        assert fc.activation_scale is scale
    # XNOR block: no ReLU in front of a sign; the host's others stay (BN -> ReLU after the FP
    # conv, before the pools and before the FP classifier), each binary layer has its own BN
    assert [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)] == ["2", "5", "9", "13"]
    assert {n: type(m).__name__ for n, m in net.named_modules() if n.endswith(".act")} == {
        "3.act": "Identity", "7.act": "Identity", "11.act": "Identity"}


def test_xnor_and_abcnet_reorder_conv_blocks():
    for method in ("xnor", "abcnet"):
        net = create_method(method).convert(build("blocks"))
        orders = [b.order for b in net.modules() if isinstance(b, ConvBlock)]
        assert orders[0] != XNOR_ORDER  # first block keeps its FP conv and order
        assert orders[1:] == [XNOR_ORDER, XNOR_ORDER]
        assert net[1].bn.num_features == net[1].conv.in_channels


def test_dorefa_bits_and_gradient_quantization():
    net = create_method("dorefa", w_bits=2, a_bits=3, g_bits=4).convert(build("mlp"))
    layers = _binary(net)
    assert all(isinstance(layer, GradQuantLinear) and layer.grad_bits == 4 for layer in layers)
    assert all(layer.weight_bits == 2 and layer.input_bits == 3 for layer in layers)
    levels = (layers[0].quantized_weight().detach() + 1) / 2 * 3
    torch.testing.assert_close(levels, levels.round())
    x = torch.randn(5, 64, requires_grad=True)
    torch.manual_seed(1)
    layers[0].train()
    layers[0](x).sum().backward()
    assert torch.isfinite(x.grad).all()
    fp = create_method("dorefa", w_bits=32, a_bits=32, g_bits=32).convert(build("mlp"))
    assert _binary(fp) == []


def test_abcnet_shifts_and_betas_learn_and_real_activation_option():
    torch.manual_seed(0)
    m = create_method("abcnet", weight_bases=5, activation_bases=4)
    net = m.convert(build("mlp"))
    layer = _binary(net)[0]
    assert layer.weight_bits == 5 and layer.input_bits == 4
    assert layer.weight_quantizer.scales_per_tensor == 5
    net.train()
    net(torch.randn(8, 1, 28, 28)).sum().backward()
    q = layer.input_quantizer
    assert q.shifts.grad is not None and q.betas.grad is not None and q.betas.grad.abs().sum() > 0
    names = {n for n, _ in net.named_parameters()}
    assert any(n.endswith("input_quantizer.shifts") for n in names)
    real = create_method("abcnet", activation_bases=None).convert(build("mlp"))
    assert all(layer.input_bits == 32 for layer in _binary(real))
    assert any(isinstance(mod, nn.ReLU) for mod in real.modules())


def test_tang_recipe():
    m = create_method("tang")
    net = m.convert(build("mlp"))
    kinds = [type(mod).__name__ for mod in net]
    # conv -> PReLU -> BatchNorm -> binary layer (its dropout acts after its input quantizer),
    # first layer FP; the last layer is binary -> scale, with no output BatchNorm
    assert kinds[2:6] == ["Linear", "PReLU", "BatchNorm1d", "Identity"]
    assert isinstance(net[6].input_dropout, nn.Dropout)
    assert isinstance(net[-2].scale, Scale) and net[-2].scale.scale.item() == pytest.approx(1e-3)
    assert kinds[-1] == "Identity"
    layers = _binary(net)
    assert len(layers) == 3 and all(layer.input_bits == 2 for layer in layers)
    reg = m.regularizer(net)
    ref = 5e-7 * sum((1 - layer.weight ** 2).sum() for layer in layers)
    torch.testing.assert_close(reg, ref)
    # Table 3 knobs: a full-precision last layer has no scale layer; scale_layer=false drops it
    for knobs in ({"fp_last": True}, {"scale_layer": False}):
        net = create_method("tang", **knobs).convert(build("mlp"))
        assert not any(isinstance(mod, Scale) for mod in net.modules())
    # Table 2 knob: relu, still in front of the BatchNorm
    net = create_method("tang", activation="relu", activation_bits=1).convert(build("mlp"))
    assert [type(mod).__name__ for mod in net][3:5] == ["ReLU", "BatchNorm1d"]
    assert _binary(net)[0].input_bits == 1
    assert create_method("tang", bipolar_lambda=0).regularizer(net) is None


def test_bnn_shift_batchnorm_and_shift_adamax(make_cfg):
    net = create_method("bnn", shift_bn=True).convert(build("mlp"))
    sbn = [mod for mod in net.modules() if isinstance(mod, ShiftBatchNorm)]
    assert len(sbn) == 4 and not any(type(mod) is nn.BatchNorm1d for mod in net.modules())
    x = torch.randn(32, 64) * 3 + 1
    bn = sbn[0].train()
    y = bn(x)
    scale = y.std(0) / (x - x.mean(0)).std(0)  # a power of two per channel
    torch.testing.assert_close(scale, ap2(scale), rtol=1e-4, atol=0)
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = ShiftAdamax([p], lr=0.01)
    p.grad = torch.tensor([0.5, -0.25])
    opt.step()
    # m = 0.1 g, v = |g|, step = AP2(0.01 / 0.1) * m * AP2(1 / |g|) = 0.125 * 0.1 * sign(g)
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 0.0125, -2.0 + 0.0125]))
    cfg = make_cfg(["+method=bnn", "method.shift_bn=true", "optimizer=shift_adamax"])
    assert isinstance(instantiate(cfg.optimizer)([p]), ShiftAdamax)
