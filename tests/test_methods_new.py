"""Bi-Real Net, ReActNet and XNOR-Net++ (issue 13): closed-form forward and gradient of each
function, the block composition in train and eval mode, knobs, a short fit and the packed export.

Every reference here is written from the paper (or the authors' code it cites), never by calling
the layer's own pieces.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.bench import trained_like_batchnorm
from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.nn.layers import is_quantized, quantized_layers
from bnnbench.nn.modern_layers import (
    BinaryUnit,
    BiRealBlock,
    GammaConv2d,
    GammaLinear,
    PreNormUnit,
    RPReLU,
    approx_sign,
    magnitude_sign,
)
from bnnbench.train import run
from tests.conftest import FAST

NEW = ["bireal", "reactnet", "xnorpp"]


def ref_sign(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def authors_F(x: Tensor) -> Tensor:
    """Bi-Real Eq. 6 / the authors' BinaryActivation polynomial (differentiable everywhere)."""
    return torch.where(x < -1, -torch.ones_like(x),
                       torch.where(x < 0, 2 * x + x * x,
                                   torch.where(x < 1, 2 * x - x * x, torch.ones_like(x))))


# ------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("value, grad", [(-2.0, 0.0), (-1.0, 0.0), (-0.75, 0.5), (-0.25, 1.5),
                                         (0.0, 2.0), (0.25, 1.5), (0.5, 1.0), (0.999, 0.002),
                                         (1.0, 0.0), (3.0, 0.0)])
def test_approx_sign_forward_and_gradient_closed_form(value, grad):
    x = torch.tensor([value], dtype=torch.float64, requires_grad=True)
    y = approx_sign(x)
    assert y.item() == (1.0 if value >= 0 else -1.0)  # sign(0) = +1
    y.backward(torch.tensor([1.0], dtype=torch.float64))
    assert x.grad.item() == pytest.approx(grad, abs=1e-12)


def test_approx_sign_gradient_is_the_authors_polynomial_slope():
    x = torch.linspace(-1.6, 1.6, 321, dtype=torch.float64, requires_grad=True)
    g = torch.randn(321, dtype=torch.float64)
    approx_sign(x).backward(g)
    xr = x.detach().clone().requires_grad_(True)
    authors_F(xr).backward(g)
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("gradient", ["paper", "code"])
def test_magnitude_sign_forward_and_gradient_closed_form(gradient):
    w = torch.tensor([[0.5, -1.0, 2.0, 0.0], [-0.1, 0.3, -0.2, 1.5]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]])
    wb = magnitude_sign(w, gradient)
    alpha = torch.tensor([[3.5 / 4], [2.1 / 4]])  # mean |W_o| per output row
    torch.testing.assert_close(wb, alpha * torch.tensor([[1.0, -1, 1, 1], [-1, 1, -1, 1]]))
    wb.backward(g)
    if gradient == "paper":  # g * alpha_o * 1{|W| < 1}: |W| = 1 is outside
        mask = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0]])
        want = g * alpha * mask
    else:  # the authors' clamp(W, -1, 1): 1{|W| <= 1}
        want = g * torch.tensor([[1.0, 1, 0, 1], [1, 1, 1, 0]])
    torch.testing.assert_close(w.grad, want)


def test_rprelu_is_equation_3():
    torch.manual_seed(0)
    act = RPReLU(3)
    with torch.no_grad():
        act.shift_in.copy_(torch.tensor([0.5, -0.2, 0.0]))    # gamma = -shift_in
        act.slope.copy_(torch.tensor([0.25, 0.1, -0.5]))      # beta
        act.shift_out.copy_(torch.tensor([1.0, 0.0, -0.3]))   # zeta
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    gamma = torch.tensor([-0.5, 0.2, 0.0]).view(1, 3, 1, 1)
    beta = torch.tensor([0.25, 0.1, -0.5]).view(1, 3, 1, 1)
    zeta = torch.tensor([1.0, 0.0, -0.3]).view(1, 3, 1, 1)
    xd = x.detach()
    want = torch.where(xd > gamma, xd - gamma + zeta, beta * (xd - gamma) + zeta)
    y = act(x)
    torch.testing.assert_close(y, want)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(xd > gamma, 1.0, beta.expand_as(xd)))
    # dL/dbeta_c = sum of min(x - gamma, 0) over channel c
    torch.testing.assert_close(act.slope.grad, (xd - gamma).clamp(max=0).sum((0, 2, 3)))


def test_gamma_conv_forward_and_gradients_are_the_factorized_scale():
    torch.manual_seed(0)
    conv = GammaConv2d(4, 6, 3, padding=1, bias=True, out_size=(5, 7),
                       weight_quantizer=None, input_quantizer=None)
    from bnnbench.nn.quantizers import SignQuantizer
    conv.weight_quantizer, conv.input_quantizer = SignQuantizer(cancel=False), SignQuantizer()
    with torch.no_grad():
        for p in (conv.scale_channel, conv.scale_height, conv.scale_width, conv.bias):
            p.normal_()
    x = torch.randn(2, 4, 5, 7)
    y = conv(x)
    a, b, c = (t.detach().clone().requires_grad_(True) for t in
               (conv.scale_channel, conv.scale_height, conv.scale_width))
    prod = F.conv2d(ref_sign(x), ref_sign(conv.weight.detach()), padding=1)
    gamma = torch.einsum("o,i,j->oij", a, b, c)  # Gamma_{o,i,j} = alpha_o beta_i gamma_j
    want = prod * gamma + conv.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    y.backward(g)
    want.backward(g)
    for mine, ref in ((conv.scale_channel, a), (conv.scale_height, b), (conv.scale_width, c)):
        torch.testing.assert_close(mine.grad, ref.grad)


# ------------------------------------------------------------------------------ compositions
def bn_ref(bn: nn.BatchNorm2d, y: Tensor, train: bool) -> Tensor:
    """BatchNorm from its definition: batch statistics in training, running ones in eval."""
    if train:
        mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False,
                                                           keepdim=True)
    else:
        mean, var = bn.running_mean.view(1, -1, 1, 1), bn.running_var.view(1, -1, 1, 1)
    return (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + \
        bn.bias.view(1, -1, 1, 1)


def ref_unit(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, train: bool,
             shift: Tensor | None = None) -> Tensor:
    """BN(conv(sign(x + shift), alpha_o sign(W))) -- Bi-Real's unit before the addition."""
    w = conv.weight.detach()
    wb = w.abs().mean((1, 2, 3), keepdim=True) * ref_sign(w)
    xs = x if shift is None else x + shift.detach().view(1, -1, 1, 1)
    return bn_ref(bn, F.conv2d(ref_sign(xs), wb, stride=conv.stride, padding=conv.padding), train)


def ref_rprelu(act: RPReLU, y: Tensor) -> Tensor:
    gamma, beta, zeta = (-act.shift_in.detach(), act.slope.detach(), act.shift_out.detach())
    gamma, beta, zeta = (t.view(1, -1, 1, 1) for t in (gamma, beta, zeta))
    return torch.where(y > gamma, y - gamma + zeta, beta * (y - gamma) + zeta)


def ref_downsample(block: BiRealBlock, x: Tensor, train: bool) -> Tensor:
    """The authors' AvgPool2d(2) -> 1x1 conv -> BN (ceil mode: 7 x 7 -> 4 x 4 as the conv)."""
    conv, bn = block.downsample[1], block.downsample[2]
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    return bn_ref(bn, F.conv2d(pooled, conv.weight.detach()), train)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("method", ["bireal", "reactnet"])
def test_resnet_block_is_two_units_with_real_shortcuts(method, train):
    """ResNet-18's BasicBlock -> sign -> conv -> BN -> + shortcut, twice; no ReLU; the
    downsample is AvgPool -> real 1x1 conv -> BN; ReActNet adds RSign shifts and RPReLU."""
    torch.manual_seed(0)
    net = create_method(method).convert(
        create_model("resnet18", in_chans=1, num_classes=10, img_size=28))
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    blocks = [m for m in net.modules() if isinstance(m, BiRealBlock)]
    assert len(blocks) == 8  # 16 binary convs, each with its own shortcut
    assert not is_quantized(blocks[2].downsample[1])  # the shortcut stays real
    trained_like_batchnorm(net, seed=1)
    for block in (blocks[0], blocks[6]):  # identity shortcut; downsample on 7 x 7 -> 4 x 4
        with torch.no_grad():
            if method == "reactnet":
                for p in (*block.shift1.parameters(), *block.act1.parameters(),
                          *block.shift2.parameters(), *block.act2.parameters()):
                    p.add_(torch.randn_like(p) * 0.3)
        c_in = block.conv1.in_channels
        x = torch.randn(4, c_in, 7, 7) if block is blocks[6] else torch.randn(4, c_in, 28, 28)
        block.train(train)
        with torch.no_grad():
            got = block(x)
        react = method == "reactnet"
        shortcut = ref_downsample(block, x, train) if block.downsample is not None else x
        y1 = ref_unit(block.conv1, block.bn1, x, train,
                      block.shift1.shift if react else None) + shortcut
        y1 = ref_rprelu(block.act1, y1) if react else y1
        y2 = ref_unit(block.conv2, block.bn2, y1, train,
                      block.shift2.shift if react else None) + y1
        want = ref_rprelu(block.act2, y2) if react else y2
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_bireal_unit_on_a_plain_host(train):
    """mlp: every hidden binary Linear becomes sign -> Linear -> BN -> + x (identity shortcut),
    the BatchNorm moved into the unit, no ReLU; dropout acts after the sign (train only)."""
    torch.manual_seed(0)
    net = create_method("bireal").convert(
        create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=32,
                     dropout_hidden=0.0, dropout_in=0.0))
    units = [m for m in net.modules() if isinstance(m, BinaryUnit)]
    assert len(units) == 2 and all(isinstance(u.shortcut, nn.Identity) for u in units)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    unit = units[0]
    trained_like_batchnorm(net, seed=2)
    unit.train(train)
    x = torch.randn(16, 32)
    w = unit.layer.weight.detach()
    prod = ref_sign(x) @ (w.abs().mean(1, keepdim=True) * ref_sign(w)).T
    bn = unit.norm
    if train:
        mean, var = prod.mean(0), prod.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    want = (prod - mean) / torch.sqrt(var + bn.eps) * bn.weight.detach() + bn.bias.detach() + x
    with torch.no_grad():
        torch.testing.assert_close(unit(x), want, rtol=1e-4, atol=1e-5)


def test_plain_host_shortcut_rules():
    """Identity where the shape is kept, AvgPool(s) at stride s, none where channels change."""
    from bnnbench.methods.bireal import unit_shortcut

    assert isinstance(unit_shortcut(nn.Conv2d(8, 8, 3, padding=1)), nn.Identity)
    pool = unit_shortcut(nn.Conv2d(8, 8, 3, stride=2, padding=1))
    assert isinstance(pool, nn.AvgPool2d)
    x = torch.randn(1, 8, 7, 7)
    assert pool(x).shape == nn.Conv2d(8, 8, 3, stride=2, padding=1)(x).shape
    assert unit_shortcut(nn.Conv2d(8, 16, 3, padding=1)) is None
    assert unit_shortcut(nn.Conv2d(8, 8, 3)) is None  # no padding: the map shrinks
    assert unit_shortcut(nn.Linear(5, 6)) is None


def test_reactnet_rsign_shift_is_what_the_sign_sees():
    """ReActNet's binary layer multiplies sign(x + b_c), the shortcut carries x unshifted."""
    torch.manual_seed(0)
    net = create_method("reactnet").convert(
        create_model("resnet18", in_chans=1, num_classes=10, img_size=28))
    block = next(m for m in net.modules() if isinstance(m, BiRealBlock))
    with torch.no_grad():
        block.shift1.shift.copy_(torch.linspace(-1, 1, block.conv1.in_channels))
    seen = []
    handle = block.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = torch.randn(2, block.conv1.in_channels, 28, 28)
    block.eval()(x)
    handle.remove()
    torch.testing.assert_close(seen[0], x + block.shift1.shift.detach().view(1, -1, 1, 1))
    # the learned threshold gets the ApproxSign gradient summed over its channel
    block.train()
    block.zero_grad()
    block(x).sum().backward()
    assert block.shift1.shift.grad is not None and block.shift1.shift.grad.abs().sum() > 0


def ref_xnorpp_unit(unit: nn.Module, x: Tensor, train: bool) -> Tensor:
    """The strong baseline's half block from its formula (Real-to-Binary Sec. 4.1, larq zoo's
    ``half_binary_block``): ``PReLU(Gamma . conv(sign(BN(x)), sign(W)))``, Gamma = alpha (x)
    beta (x) gamma (XNOR-Net++ Eq. 5), PReLU with one slope per channel; no shortcut added."""
    conv, bn, prelu = unit.layer, unit.norm, unit.act
    w = conv.weight.detach()
    z = F.conv2d(ref_sign(bn_ref(bn, x, train)), ref_sign(w), stride=conv.stride,
                 padding=conv.padding)
    gamma = (conv.scale_channel.detach().view(1, -1, 1, 1)
             * conv.scale_height.detach().view(1, 1, -1, 1)
             * conv.scale_width.detach().view(1, 1, 1, -1))
    y = z * gamma
    slope = prelu.weight.detach().view(1, -1, 1, 1)
    return torch.where(y >= 0, y, slope * y)


@pytest.mark.parametrize("train", [True, False])
def test_xnorpp_resnet_block_is_the_strong_baseline(train):
    """XNOR-Net++ on ResNet-18: each BasicBlock is two half blocks ``x + PReLU(Gamma .
    conv(sign(BN(x))))`` (the downsample, real, as the first one's shortcut); no ReLU and no
    BatchNorm between Gamma and the addition, so a per-channel Gamma reaches the sum."""
    torch.manual_seed(0)
    net = create_method("xnorpp").convert(
        create_model("resnet18", in_chans=1, num_classes=10, img_size=28))
    trained_like_batchnorm(net, seed=1)
    blocks = [net.get_submodule(f"layer{i}.{j}") for i in (1, 3) for j in (0,)]
    for p in net.parameters():  # Gamma and PReLU away from their inits
        if p.dim() == 1:
            p.data.mul_(torch.rand_like(p) + 0.5)
    x = {0: torch.randn(4, 64, 28, 28), 1: torch.randn(4, 128, 14, 14)}
    for i, block in enumerate(blocks):
        block.train(train)
        with torch.no_grad():
            got = block(x[i])
        unit1, unit2 = block.conv1, block.conv2
        down = unit1.shortcut
        if isinstance(down, nn.Identity):
            shortcut = x[i]
        else:  # AvgPool(2) -> real 1x1 conv -> BN
            assert not is_quantized(down[1])
            pooled = F.avg_pool2d(x[i], 2, 2, ceil_mode=True)
            shortcut = bn_ref(down[2], F.conv2d(pooled, down[1].weight.detach()), train)
        y1 = ref_xnorpp_unit(unit1, x[i], train) + shortcut
        want = ref_xnorpp_unit(unit2, y1, train) + y1
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.ReLU) for n, m in net.named_modules() if "layer" in n)


def test_xnorpp_channel_gamma_changes_the_trained_like_network():
    """The review's check on the composed network: rescaling any one binary layer's per-channel
    alpha by positive factors changes the train-mode output (a BatchNorm right after the layer
    would cancel it) on resnet18, vgg_small and mlp."""
    hosts = {"resnet18": dict(img_size=28), "mlp": dict(img_size=28, hidden_features=32),
             "vgg_small": dict(img_size=16, widths=(8, 16, 16), hidden_features=16)}
    for host, kw in hosts.items():
        torch.manual_seed(0)
        net = create_method("xnorpp", scales="channel").convert(
            create_model(host, in_chans=1, num_classes=10, **kw))
        trained_like_batchnorm(net, seed=1).train()
        x = torch.randn(8, 1, kw["img_size"], kw["img_size"])
        layers = [m for m in net.modules() if isinstance(m, (GammaConv2d, GammaLinear))]
        assert layers
        with torch.no_grad():
            base = net(x)
            for layer in layers:
                old = layer.scale_channel.clone()
                layer.scale_channel.mul_(torch.rand_like(old) * 3 + 0.2)
                changed = not torch.allclose(net(x), base, rtol=1e-5, atol=1e-6)
                layer.scale_channel.copy_(old)
                # a layer that changes the shape on a plain host has no shortcut: its alpha
                # reaches the next unit's BatchNorm only through PReLU / max-pool, which are
                # positively homogeneous per channel, so training mode cancels it
                unit_has_path = host == "resnet18" or any(
                    u.layer is layer and u.shortcut is not None for u in net.modules()
                    if isinstance(u, PreNormUnit)) or layer is layers[-1]
                assert changed or not unit_has_path, (host, layer)


def test_xnorpp_factorized_scales_follow_the_feature_maps():
    net = create_method("xnorpp").convert(
        create_model("resnet18", in_chans=1, num_classes=10, img_size=28))
    sizes = {name.removesuffix(".layer"): (len(m.scale_height), len(m.scale_width))
             for name, m in net.named_modules() if isinstance(m, GammaConv2d)}
    assert sizes["layer1.0.conv1"] == (28, 28) and sizes["layer2.0.conv1"] == (14, 14)
    assert sizes["layer3.1.conv2"] == (7, 7) and sizes["layer4.0.conv2"] == (4, 4)
    channel = create_method("xnorpp", scales="channel").convert(
        create_model("resnet18", in_chans=1, num_classes=10, img_size=28))
    assert all(m.scale_height is None for m in channel.modules() if isinstance(m, GammaConv2d))


def test_xnorpp_factorized_needs_the_input_size_one_line():
    host = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                         nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(BnnbenchError, match="method.scales=channel") as info:
        create_method("xnorpp").convert(host)
    assert "\n" not in str(info.value)


def authors_shape(module: nn.Module, local: str, param: torch.Tensor) -> tuple[int, ...]:
    """The shape the authors' network (liuzechun/ReActNet resnet/2_step2/birealnet.py,
    mobilenet/1_step1/reactnet.py) gives the tensor in this role: each learnable shift is a
    ``LearnableBias`` of shape (1, C, 1, 1) (move0 before the sign; move1 and move2 around the
    PReLU); RPReLU's slope is their ``nn.PReLU(C)`` weight (C,); convs, BatchNorm and the fc
    keep their shapes."""
    from bnnbench.nn.modern_layers import LearnableShift, RPReLU

    if isinstance(module, LearnableShift) or (isinstance(module, RPReLU)
                                              and local in ("shift_in", "shift_out")):
        return (1, param.numel(), 1, 1)
    return tuple(param.shape)


@pytest.mark.parametrize("host", ["resnet18", "reactnet_a"])
def test_reactnet_weight_decay_groups_are_the_authors(host):
    """The authors' train.py (resnet/1_step1, mobilenet/1_step1): ``if p.ndimension() == 4 or
    'conv' in pname`` -> the group with ``weight_decay=args.weight_decay``, the rest
    ``other_parameters`` at Adam's default 0. (Every parameter of theirs whose name holds
    'conv' is a 4-D kernel, so the rule is the 4-D one on their shapes.)"""
    net = create_method("reactnet").convert(
        create_model(host, in_chans=3, num_classes=10, img_size=32))
    expected = {f"{m}.{local}" if m else local
                for m, module in net.named_modules()
                for local, p in module.named_parameters(recurse=False)
                if len(authors_shape(module, local, p)) == 4}
    free, decayed = create_method("reactnet").param_groups(net)
    assert free["weight_decay"] == 0.0 and "weight_decay" not in decayed
    names = {id(p): n for n, p in net.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == expected
    assert len(free["params"]) + len(decayed["params"]) == len(list(net.parameters()))
    assert any(".shift" in n for n in expected)  # the shifts are there to be decayed


def test_reactnet_step1_binary_activations_real_weights():
    net = create_method("reactnet", binary_weights=False).convert(
        create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=16))
    layers = [layer for _, layer in quantized_layers(net)]
    assert len(layers) == 2 and all(layer.weight_bits == 32 and layer.input_bits == 1
                                    for layer in layers)


def test_bottleneck_resnets_are_refused_one_line():
    class Bottleneck(nn.Module):  # the class name timm and torchvision give ResNet-50's blocks
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 1)

    host = nn.Sequential(nn.Conv2d(1, 4, 3), Bottleneck(), nn.Flatten(), nn.Linear(4, 2))
    for method, knobs in (("bireal", {}), ("reactnet", {}), ("xnorpp", {"scales": "channel"})):
        with pytest.raises(BnnbenchError, match="resnet18 or model=resnet34"):
            create_method(method, **knobs).convert(copy.deepcopy(host))


BAD_KNOBS = [
    ("bireal", {"weight_gradient": "ste"}, "method.weight_gradient"),
    ("reactnet", {"latent_clip": 0.0}, "method.latent_clip"),
    ("xnorpp", {"scales": "spatial"}, "method.scales"),
    ("xnorpp", {"activation": "swish"}, "method.activation"),
]


@pytest.mark.parametrize("method, knobs, key", BAD_KNOBS)
def test_bad_knob_is_one_line_error(method, knobs, key):
    with pytest.raises(BnnbenchError, match=key.replace(".", r"\.")) as info:
        create_method(method, **knobs)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ export
@pytest.mark.parametrize("method", NEW)
def test_packed_model_runs_sign_x_sign_layers_on_the_kernels(method, tmp_path):
    """Every binary layer of the exported network takes the packed XNOR-popcount path and
    predicts what the trained network predicts."""
    pytest.importorskip("bnnbench.kernels")
    from bnnbench.packed.format import load_packed, save_packed
    from bnnbench.packed.routes import kernel_route

    spec = {"model": {"name": "resnet18", "kwargs": {}},
            "method": {"name": method, "knobs": {}},
            "data": {"name": "synthetic", "args": {}}}
    geometry = {"in_chans": 1, "num_classes": 10, "img_size": 8}
    from bnnbench.spec import build_net
    torch.manual_seed(0)
    net = trained_like_batchnorm(build_net(spec, geometry), seed=1).eval()
    path = save_packed(net, tmp_path / "net.safetensors", spec, geometry)
    fast = load_packed(path)
    routes = [r for _, m in fast.named_modules() if (r := kernel_route(m))]
    binary = sum(1 for _, m in quantized_layers(net) if is_quantized(m))
    assert routes == ["own"] * binary and binary >= 16
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = net(x), fast(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


# ------------------------------------------------------------------------------ training
@pytest.mark.slow
@pytest.mark.parametrize("method", NEW)
def test_one_epoch_on_mnist5k_learns(make_cfg, method):
    """20 batches of the embedded MNIST (2,000 digits) lift test accuracy far above chance
    (10 %) on the whole 1,000-digit test split."""
    overrides = [f"+method={method}", *[o for o in FAST if "limit_" not in o],
                 "+trainer.limit_train_batches=20", "+trainer.limit_val_batches=1",
                 "model.hidden_features=128"]
    record = run(make_cfg(overrides))
    assert record.test_top1 > 40, record.test_top1  # measured: 77.1 / 71.3 / 64.2
