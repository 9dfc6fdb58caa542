"""Tests that kill the mutants the fast suite let survive (issue 10, "Proof: mutation check").

``python -m bnnbench.devtools.mutation`` mutates ``functional.py``, ``nn/``, ``methods/`` and
``lit.py`` and lists the mutants no fast test noticed (``reports/mutation.md``). Each test here
pins one behaviour such a mutant changed, against a reference written from the paper or the
authors' code (numbers worked out by hand, formulas restated from the paper), never by calling
the implementation's own helpers.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau

from bnnbench.lit import BNNModule
from bnnbench.methods import create_method
from bnnbench.methods.bnn import glorot_lr_scale
from bnnbench.models import create_model
from bnnbench.nn.layers import QuantLinear, is_quantized, quantized_layers
from bnnbench.nn.paper_layers import GradQuantLinear

HIDDEN = 64


def mlp() -> nn.Module:
    return create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=HIDDEN)


def binary_layers(net: nn.Module) -> list[nn.Module]:
    return [layer for _, layer in quantized_layers(net) if is_quantized(layer)]


# --- DoReFa: the gradient reaching a quantized layer's output is k-bit (Sec. 2.5) ---------------

@pytest.mark.parametrize("g_bits", [2, 4])
def test_dorefa_layer_gradient_is_on_the_k_bit_grid_in_training_only(g_bits):
    """dr~ = 2 m (quantize_k(dr / 2m + 1/2 + N(k)) - 1/2): per sample, 2^k levels of step 2m/n.

    With one-hot inputs (x = I) and W~ = sign(W) E whose gradient is the identity,
    dL/dW = dr~^T x = dr~^T: the weight gradient *is* the quantized output gradient.
    """
    net = create_method("dorefa", w_bits=1, a_bits=32, g_bits=g_bits).convert(mlp())
    layer = binary_layers(net)[0]
    assert isinstance(layer, GradQuantLinear)
    n_in, n_out = layer.in_features, layer.out_features
    torch.manual_seed(0)
    upstream = torch.randn(n_in, n_out, dtype=torch.float64)
    layer.double()
    levels = 2**g_bits - 1
    for train in (True, False):
        layer.train(train)
        layer.weight.grad = None
        (layer(torch.eye(n_in, dtype=torch.float64)) * upstream).sum().backward()
        got = layer.weight.grad.T  # (samples, outputs)
        if not train:  # evaluation: nothing quantized
            torch.testing.assert_close(got, upstream)
            continue
        m = upstream.abs().amax(dim=1, keepdim=True)
        j = (got / (2 * m) + 0.5) * levels  # grid index: an integer in [0, n]
        torch.testing.assert_close(j, j.round(), atol=1e-9, rtol=0)
        assert j.min() >= -1e-9 and j.max() <= levels + 1e-9
        assert (got - upstream).abs().max() <= 2 * m.max() / levels + 1e-9  # stochastic rounding
        assert not torch.allclose(got, upstream)  # it did quantize


def test_dorefa_gradient_stochastic_rounding_is_unbiased():
    """E[dr~] = dr away from the grid ends (uniform noise of one step, then round)."""
    from bnnbench.functional import dorefa_gradient

    g = torch.tensor([[0.3, -0.7, 1.0, 0.05]], dtype=torch.float64).repeat(20000, 1)
    x = torch.zeros_like(g, requires_grad=True)
    dorefa_gradient(x, 2, torch.Generator().manual_seed(0)).backward(g)
    # grid for m = 1, n = 3: {-1, -1/3, 1/3, 1}; 0.3 lies between -1/3 and 1/3, etc.
    torch.testing.assert_close(x.grad.mean(0), g[0], atol=0.02, rtol=0)
    values = x.grad[:, 0].unique()
    torch.testing.assert_close(values, torch.tensor([-1 / 3, 1 / 3], dtype=torch.float64))


# --- BinaryNet: htanh, not ReLU, in front of every sign ------------------------------------------

def test_bnn_replaces_relu_by_htanh_so_binary_inputs_take_both_signs():
    """BinaryNet's block is BN -> htanh -> sign: a ReLU there makes every binary input
    sign(relu(x)) = +1 (sign(0) = +1), a constant network."""
    torch.manual_seed(0)
    net = create_method("bnn").convert(mlp()).eval()
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    htanhs = [m for m in net.modules() if isinstance(m, nn.Hardtanh)]
    assert htanhs and all((m.min_val, m.max_val) == (-1.0, 1.0) for m in htanhs)
    seen = []
    hooks = [layer.input_quantizer.register_forward_hook(lambda _, __, out: seen.append(out))
             for layer in binary_layers(net) if layer.input_bits < 32]
    with torch.no_grad():
        net(torch.randn(32, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert seen
    for out in seen:
        assert set(out.unique().tolist()) == {-1.0, 1.0}
        assert 0.2 < (out < 0).float().mean().item() < 0.8


# --- BinaryNet / BinaryConnect: Glorot learning-rate scale --------------------------------------

@pytest.mark.parametrize("layer, expected", [
    # authors' W_LR_scale = 1 / sqrt(1.5 / (num_inputs + num_units)); conv: times the kernel taps
    (nn.Linear(784, 2048), 1 / math.sqrt(1.5 / (784 + 2048))),
    (nn.Linear(10, 5), math.sqrt(10.0)),
    (nn.Conv2d(3, 8, 3), math.sqrt(66.0)),  # fan_in 27, fan_out 72
    (nn.Conv2d(128, 256, (3, 3)), 1 / math.sqrt(1.5 / (9 * 128 + 9 * 256))),
    (nn.Conv2d(4, 6, (1, 3)), math.sqrt(20.0)),  # fan_in 3 * 4, fan_out 3 * 6
])
def test_glorot_lr_scale_numbers(layer, expected):
    assert glorot_lr_scale(layer) == pytest.approx(expected, rel=1e-12)


def make_module(method: str, scheduler=None, **knobs) -> BNNModule:
    m = create_method(method, **knobs)
    return BNNModule(m.convert(mlp()), m, partial(torch.optim.SGD, lr=0.1), scheduler)


@pytest.mark.parametrize("method", ["bnn", "binaryconnect"])
def test_optimizer_lr_of_binary_weights_is_scaled(method):
    """The optimizer the Lightning module builds trains W at lr x Glorot scale, the rest at lr."""
    module = make_module(method)
    optimizer = module.configure_optimizers()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    binary = {id(layer.weight): layer for layer in binary_layers(module.net)}
    assert binary and len(lr_of) == sum(1 for _ in module.net.parameters())
    for p in module.net.parameters():
        layer = binary.get(id(p))
        scale = 1.0 if layer is None else (1.5 / (layer.in_features + layer.out_features)) ** -0.5
        assert lr_of[id(p)] == pytest.approx(0.1 * scale)
    assert any(lr > 0.1 for lr in lr_of.values())


@pytest.mark.parametrize("method", ["bnn", "binaryconnect"])
def test_lr_scale_false_trains_everything_at_the_optimizer_lr(method):
    optimizer = make_module(method, lr_scale=False).configure_optimizers()
    assert {group["lr"] for group in optimizer.param_groups} == {0.1}


def test_plateau_scheduler_watches_the_training_loss():
    """Tang et al.: the lr is halved "once the training loss stops decreasing"."""
    config = make_module("tang", scheduler=partial(ReduceLROnPlateau, factor=0.5))
    config = config.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["lr_scheduler"]["scheduler"].optimizer is config["optimizer"]
    assert isinstance(config["lr_scheduler"]["scheduler"], ReduceLROnPlateau)
    assert config["lr_scheduler"]["monitor"] == "train/loss"
    assert config["lr_scheduler"]["interval"] == "epoch"
    other = make_module("bnn", scheduler=partial(ExponentialLR, gamma=0.5)).configure_optimizers()
    assert "monitor" not in other["lr_scheduler"]


def test_quant_linear_is_plain_linear_without_quantizers():
    """Sanity anchor for the layer tests: no quantizer means F.linear itself."""
    torch.manual_seed(0)
    layer = QuantLinear(5, 3)
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)


# --- BinaryNet Algorithm 3/4: shift-based BatchNorm and AdaMax -----------------------------------

def ref_ap2(x: float) -> float:
    """Nearest power of two in log scale, sign kept (BinaryNet Sec. 1.4); AP2(0) = 0."""
    return 0.0 if x == 0 else math.copysign(2.0 ** round(math.log2(abs(x))), x)


@pytest.mark.parametrize("value, expected", [(3.0, 4.0), (0.3, 0.25), (-5.0, -4.0), (1.0, 1.0),
                                             (0.0, 0.0), (-0.7, -0.5), (1000.0, 1024.0)])
def test_ap2_numbers(value, expected):
    from bnnbench.nn.shift import ap2

    assert ref_ap2(value) == expected
    assert ap2(torch.tensor([value])).item() == expected


def test_shift_batchnorm_equals_batchnorm_where_every_ap2_is_exact():
    """Algorithm 3 with C(x) = +-2 per channel: AP2(C) = C, var = 4, AP2(1/sqrt(4 + eps)) = 1/2,
    so it must agree with torch's BatchNorm in training (output and running statistics, torch's
    momentum and unbiased running variance) and in evaluation."""
    from bnnbench.nn.shift import ShiftBatchNorm

    torch.manual_seed(0)
    signs = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]).repeat(4, 1)  # (8, 3), mean 0
    x = 2 * signs + torch.tensor([1.0, -3.0, 0.5])  # per-channel means 1, -3, 0.5
    bn = nn.BatchNorm1d(3, momentum=0.25)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.5, 1.0]))  # powers of two: AP2(gamma) = gamma
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    shift = ShiftBatchNorm.from_batchnorm(bn)
    for module in (bn, shift):
        module.train()
    y = shift(x)
    torch.testing.assert_close(y, bn(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(shift.running_mean, bn.running_mean)
    torch.testing.assert_close(shift.running_var, bn.running_var)
    assert shift.num_batches_tracked.item() == 1
    shift(x + 1.0), bn(x + 1.0)  # a second step: the running averages mix old and new
    torch.testing.assert_close(shift.running_mean, bn.running_mean)
    torch.testing.assert_close(shift.running_var, bn.running_var)
    pair, bn_pair = ShiftBatchNorm(3, momentum=0.5), nn.BatchNorm1d(3, momentum=0.5)
    pair(x[:2]), bn_pair(x[:2])  # n = 2: unbiased running variance var * 2 / 1
    torch.testing.assert_close(pair.running_var, bn_pair.running_var)
    # training output by hand: x^ = +-1, y = gamma x^ + beta
    torch.testing.assert_close(y, signs * torch.tensor([2.0, 0.5, 1.0])
                               + torch.tensor([0.1, -0.2, 0.3]), atol=1e-5, rtol=0)
    shift.eval()
    bn.eval()
    probe = torch.randn(5, 3)
    mean, var = bn.running_mean, bn.running_var
    expected = ((probe - mean) * torch.tensor([ref_ap2((v + 1e-5) ** -0.5) for v in var.tolist()])
                * torch.tensor([2.0, 0.5, 1.0]) + torch.tensor([0.1, -0.2, 0.3]))
    torch.testing.assert_close(shift(probe), expected)


def test_shift_batchnorm_momentum_none_is_the_cumulative_average():
    """momentum=None (torch: the cumulative average of all batches, as from_batchnorm copies it):
    after batches with per-channel means m1, m2, m3 the running mean is their plain average, as in
    torch's BatchNorm (the +-2 batches keep AP2 exact, so the running variance agrees too)."""
    from bnnbench.nn.shift import ShiftBatchNorm

    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 1)  # (4, 2), mean 0, var 1
    shift, bn = ShiftBatchNorm(2, momentum=None), nn.BatchNorm1d(2, momentum=None)
    means = [torch.tensor([1.0, -3.0]), torch.tensor([5.0, 1.0]), torch.tensor([0.0, 8.0])]
    for m in means:
        shift(2 * signs + m), bn(2 * signs + m)
    torch.testing.assert_close(shift.running_mean, torch.tensor([2.0, 2.0]))  # by hand
    torch.testing.assert_close(shift.running_mean, bn.running_mean)
    torch.testing.assert_close(shift.running_var, bn.running_var)  # 4 * 4 / 3, every batch


def test_shift_batchnorm_rounds_gamma_and_the_inverse_std_to_powers_of_two():
    """y = AP2(gamma) (C(x) AP2(1 / sqrt(var + eps))) + beta, var = mean(C(x) AP2(C(x)))."""
    from bnnbench.nn.shift import ShiftBatchNorm

    x = torch.tensor([[3.0, 0.0], [-3.0, 2.0], [1.0, 4.0], [-1.0, 6.0]])  # 4 x 2
    bn = ShiftBatchNorm(2, eps=0.0)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, 0.7]))  # AP2: 4, 0.5
        bn.bias.copy_(torch.tensor([0.0, 1.0]))
    y = bn.train()(x)
    # channel 0: C = (3, -3, 1, -1), AP2(C) = (4, -4, 1, -1), var = (12 + 12 + 1 + 1) / 4 = 6.5,
    # AP2(1 / sqrt(6.5)) = AP2(0.392) = 0.5; y = 4 * 0.5 * C
    torch.testing.assert_close(y[:, 0], torch.tensor([6.0, -6.0, 2.0, -2.0]))
    # channel 1: mean 3, C = (-3, -1, 1, 3), var = (12 + 1 + 1 + 12) / 4 = 6.5; y = 0.5 * 0.5 C + 1
    torch.testing.assert_close(y[:, 1], torch.tensor([0.25, 0.75, 1.25, 1.75]))
    # running var: torch's unbiased convention, var * n / (n - 1), default momentum 0.1
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * torch.tensor([6.5, 6.5]) * 4 / 3)
    torch.testing.assert_close(bn.running_mean, 0.1 * torch.tensor([0.0, 3.0]))


def test_shift_batchnorm_on_images_normalizes_per_channel():
    from bnnbench.nn.shift import ShiftBatchNorm

    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4) * torch.tensor([1.0, 4.0, 0.25]).view(1, 3, 1, 1) + 5
    y = ShiftBatchNorm(3, affine=False).train()(x)
    assert y.shape == x.shape
    centred = x - x.mean(dim=(0, 2, 3), keepdim=True)
    ratio = (y / centred).flatten(1).T  # per channel, the one power of two multiplying C(x)
    for c, row in enumerate(ratio.reshape(3, -1)):
        torch.testing.assert_close(row, row[:1].expand_as(row))
        assert row[0].item() == ref_ap2(row[0].item())
        # within a factor 2**0.5 of 1 / std
        assert 0.5 < row[0].item() * centred[:, c].pow(2).mean().sqrt().item() < 2


def test_shift_adamax_two_steps_by_hand():
    """Algorithm 4: m = b1 m + (1 - b1) g; v = max(b2 v, |g|);
    theta -= AP2(lr / (1 - b1^t)) m AP2(1 / v) (eps negligible), weight decay adds wd theta to g."""
    from bnnbench.nn.shift import ShiftAdamax

    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = ShiftAdamax([p], lr=0.01, betas=(0.5, 0.75), eps=1e-12, weight_decay=0.25)
    theta, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
    for t, grad in enumerate(([0.5, -0.25], [-1.0, 0.125]), start=1):
        p.grad = torch.tensor(grad)
        opt.step()
        g = [gi + 0.25 * th for gi, th in zip(grad, theta)]
        m = [0.5 * mi + 0.5 * gi for mi, gi in zip(m, g)]
        v = [max(0.75 * vi, abs(gi)) for vi, gi in zip(v, g)]
        rate = ref_ap2(0.01 / (1 - 0.5**t))
        theta = [th - rate * mi * ref_ap2(1 / vi) for th, mi, vi in zip(theta, m, v)]
        torch.testing.assert_close(p.detach(), torch.tensor(theta))


@pytest.mark.parametrize("affine, track", [(True, True), (False, True), (True, False)])
def test_shift_batchnorm_from_batchnorm_keeps_every_setting(affine, track):
    from bnnbench.nn.shift import ShiftBatchNorm

    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3, affine=affine, track_running_stats=track)
    new = ShiftBatchNorm.from_batchnorm(bn)
    assert (new.num_features, new.eps, new.momentum) == (4, 1e-3, 0.3)
    assert (new.affine, new.track_running_stats) == (affine, track)
    assert new.state_dict().keys() == bn.state_dict().keys()


def test_shift_batchnorm_takes_sequences():
    """(N, C, L) inputs, as BatchNorm1d takes them; 1-D and 5-D are rejected."""
    from bnnbench.nn.shift import ShiftBatchNorm

    bn = ShiftBatchNorm(3, affine=False)
    x = torch.tensor([[-2.0, 2.0]]).repeat(2, 3, 1) + torch.arange(3.0).view(1, 3, 1)
    torch.testing.assert_close(bn.train()(x), torch.tensor([[-1.0, 1.0]]).repeat(2, 3, 1),
                               atol=1e-5, rtol=0)
    for shape in ((3,), (1, 3, 1, 1, 1)):
        with pytest.raises(ValueError):
            bn(torch.zeros(shape))


# --- stochastic binarization: the weight gradient (cancel=False) is not masked -------------------

def test_stochastic_sign_weight_gradient_is_unmasked():
    """BinaryConnect's stochastic weights: dL/dW = dL/dW_b everywhere, |W| > 1 included."""
    from bnnbench.functional import stochastic_sign

    w = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    stochastic_sign(w, torch.Generator().manual_seed(0), cancel=False).backward(g)
    torch.testing.assert_close(w.grad, g)
    w.grad = None
    stochastic_sign(w, torch.Generator().manual_seed(0)).backward(g)  # activations: cancelled
    torch.testing.assert_close(w.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0]))


def test_shift_batchnorm_without_running_stats_uses_the_batch_in_evaluation():
    from bnnbench.nn.shift import ShiftBatchNorm

    x = torch.tensor([[-2.0, 5.0], [2.0, 1.0]])  # C = +-2 per channel: x^ = +-1
    for track in (False, True):
        bn = ShiftBatchNorm(2, affine=False, track_running_stats=track).eval()
        y = bn(x)
        if track:  # running mean 0, var 1: AP2(1 / sqrt(1 + eps)) = 1, y = x
            torch.testing.assert_close(y, x)
            assert bn.num_batches_tracked.item() == 0
        else:
            torch.testing.assert_close(y, torch.tensor([[-1.0, 1.0], [1.0, -1.0]]),
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("knobs, key", [
    ({"lr": 0.0}, "optimizer.lr"), ({"lr": -1e-3}, "optimizer.lr"),
    ({"betas": (1.5, 0.9)}, "optimizer.betas[0]"), ({"betas": (-0.1, 0.9)}, "optimizer.betas[0]"),
    ({"betas": (0.9, -0.1)}, "optimizer.betas[1]"), ({"betas": (0.9, 1.5)}, "optimizer.betas[1]"),
    ({"weight_decay": -1.0}, "optimizer.weight_decay"),
])
def test_shift_adamax_bad_hyperparameter_is_one_line_error(knobs, key):
    from bnnbench.errors import BnnbenchError
    from bnnbench.nn.shift import ShiftAdamax

    with pytest.raises(BnnbenchError, match="^" + key.replace(".", r"\.").replace("[", r"\[")
                       .replace("]", r"\]") + "="):
        ShiftAdamax([nn.Parameter(torch.zeros(2))], **knobs)


# --- lit.py: top-k counts --------------------------------------------------------------------

def test_topk_correct_counts_by_hand():
    from bnnbench.lit import topk_correct

    logits = torch.tensor([[0.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0],    # target 1: top-1
                           [9.0, 0.0, 8.0, 7.0, 6.0, 5.0, 1.0],    # target 5: 5th largest
                           [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 0.0]])   # target 6: last
    target = torch.tensor([1, 5, 6])
    assert [int(c) for c in topk_correct(logits, target)] == [1, 2]
    assert [int(c) for c in topk_correct(logits, target, ks=(1, 2, 7))] == [1, 1, 3]
    # fewer classes than k: k is capped, every target is in the "top 5" of 3 classes
    assert [int(c) for c in topk_correct(logits[:, :3], torch.tensor([1, 2, 0]))] == [2, 3]


# --- base: BinaryNet's squared hinge loss, shortcut rules ----------------------------------------

def test_squared_hinge_loss_by_hand():
    """The authors' Theano: mean(sqr(maximum(0, 1 - t * y))), t = 2 one_hot - 1."""
    from bnnbench.methods.base import squared_hinge_loss

    logits = torch.tensor([[0.5, -2.0, 1.5], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 2])
    # sample 0: t = (1, -1, -1), 1 - t y = (0.5, -1, 2.5) -> (0.25, 0, 6.25); sample 1: 1, 1, 1
    loss = squared_hinge_loss(logits, target)
    assert loss.item() == pytest.approx((0.25 + 6.25 + 3) / 6)
    loss.backward()  # d/dy = -2 t max(0, 1 - t y) / 6
    torch.testing.assert_close(logits.grad, torch.tensor([[-1.0, 0.0, 5.0], [2.0, 2.0, -2.0]]) / 6)
    method = create_method("bnn", loss="squared_hinge")
    assert method.loss(logits, target).item() == pytest.approx(loss.item())
    ce = create_method("bnn").loss(logits, target)
    assert ce.item() == pytest.approx(nn.functional.cross_entropy(logits, target).item())


def test_fp_shortcut_keeps_projection_shortcuts_real():
    from bnnbench.methods.base import is_shortcut, layers_to_binarize

    assert is_shortcut("layer2.0.downsample.0") and is_shortcut("stage.shortcut")
    assert not is_shortcut("layer2.0.conv1") and not is_shortcut("my_downsample.0")
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    block = nn.Module()
    block.conv1 = nn.Conv2d(4, 8, 3)
    block.downsample = nn.Sequential(nn.Conv2d(4, 8, 1))
    net.add_module("block", block)
    net.add_module("fc", nn.Linear(8, 2))
    assert layers_to_binarize(net, True, True, False) == ["block.conv1", "block.downsample.0"]
    assert layers_to_binarize(net, True, True, True) == ["block.conv1"]
    assert layers_to_binarize(net, False, False, True) == ["stem", "block.conv1", "fc"]


@pytest.mark.parametrize("method", ["binaryconnect", "bnn", "bwn", "xnor", "dorefa", "tang",
                                    "abcnet"])
def test_first_last_and_shortcut_knobs_reach_the_conversion(method):
    """mlp has 4 Linear layers: fp_first / fp_last keep the first / last one real."""
    def linears(net: nn.Module) -> list[bool]:  # is each Linear binary, in order
        return [is_quantized(m) for m in net.modules() if isinstance(m, nn.Linear)]

    assert linears(create_method(method, fp_first=True, fp_last=True).convert(mlp())) == [
        False, True, True, False]
    assert linears(create_method(method, fp_first=False, fp_last=True).convert(mlp()))[:1] == [
        True]
    assert linears(create_method(method, fp_first=True, fp_last=False).convert(mlp()))[-1:] == [
        True]
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    block = nn.Sequential()
    block.add_module("conv1", nn.Conv2d(4, 8, 3))
    block.add_module("downsample", nn.Sequential(nn.Conv2d(4, 8, 1)))
    net.add_module("block", block)
    net.add_module("fc", nn.Linear(8, 2))
    kept = create_method(method, fp_first=False, fp_last=False, fp_shortcut=True).convert(net)
    assert not is_quantized(kept.get_submodule("block.downsample.0"))


# --- BinaryConnect / BinaryNet defaults and the latent clip -------------------------------------

@pytest.mark.parametrize("method", ["binaryconnect", "bnn"])
def test_default_is_deterministic_sign_with_unmasked_weight_gradient(method):
    """Defaults (paper's deterministic variant, Algorithm 1): W_b = sign(W) in training too, and
    dL/dW = dL/dW_b even where |W| > 1 (the clip, not a mask, bounds W)."""
    net = create_method(method).convert(mlp()).train()
    layer = binary_layers(net)[1]
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-2, 2, layer.weight.numel()).view_as(layer.weight))
    wb = layer.quantized_weight()
    torch.testing.assert_close(wb, torch.where(layer.weight >= 0, 1.0, -1.0))
    (wb * torch.ones_like(wb)).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones_like(layer.weight))


@pytest.mark.parametrize("method", ["binaryconnect", "bwn", "xnor", "tang"])
@pytest.mark.parametrize("clip", [0.5, None])
def test_latent_clip_knob_reaches_the_layers(method, clip):
    m = create_method(method, latent_clip=clip)
    net = m.convert(mlp())
    layers = binary_layers(net)
    with torch.no_grad():
        for layer in layers:
            layer.weight.fill_(3.0)
    m.after_optimizer_step(net)
    expected = 3.0 if clip is None else clip
    assert all(layer.weight.max().item() == expected for layer in layers)


@pytest.mark.parametrize("method", ["binaryconnect", "bwn", "xnor", "tang"])
@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_latent_clip_must_be_positive(method, clip):
    from bnnbench.errors import BnnbenchError

    with pytest.raises(BnnbenchError, match=r"^method\.latent_clip=.* 0 < method\.latent_clip"):
        create_method(method, latent_clip=clip)


# --- DoReFa: clip(x, 0, 1) before the last layer only where a ReLU was ---------------------------

def test_dorefa_last_relu_before():
    from bnnbench.methods.dorefa import last_relu_before

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Dropout(),
                        nn.Linear(8, 3))
    assert last_relu_before(net, "5") == "3"
    assert last_relu_before(net, "2") == "1"
    assert last_relu_before(net, "0") is None
    plain = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    assert last_relu_before(plain, "2") is None
    converted = create_method("dorefa").convert(plain)
    assert not any(isinstance(m, nn.Hardtanh) for m in converted.modules())
    assert len(converted) == 3


def test_dorefa_a32_keeps_real_inputs_and_the_relu():
    """a_bits = 32: the layer multiplies its real input (no clip to [0, 1]) and the ReLU before
    the last layer stays (the authors' full-precision-activation rows)."""
    net = create_method("dorefa", a_bits=32).convert(mlp())
    layer = binary_layers(net)[0]
    assert layer.input_bits == 32
    x = torch.linspace(-3, 3, 4 * layer.in_features).view(4, -1)
    e = layer.weight.abs().mean()
    expected = x @ (torch.where(layer.weight >= 0, e, -e)).T
    if layer.bias is not None:
        expected = expected + layer.bias
    torch.testing.assert_close(layer.eval()(x), expected)
    assert not any(isinstance(m, nn.Hardtanh) for m in net.modules())
    clipped = create_method("dorefa", a_bits=2).convert(mlp())
    assert sum(isinstance(m, nn.Hardtanh) for m in clipped.modules()) == 1


def test_dorefa_defaults_and_bit_range():
    """Defaults W1 A2 G32 with clip(x, 0, 1) before the last layer; widths are 1..32."""
    from bnnbench.errors import BnnbenchError

    net = create_method("dorefa").convert(mlp())
    layers = binary_layers(net)
    assert layers and all((layer.weight_bits, layer.input_bits, layer.grad_bits) == (1, 2, 32)
                          for layer in layers)
    assert sum(isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 1.0)
               for m in net.modules()) == 1
    for key in ("w_bits", "a_bits", "g_bits"):
        for bad in (0, 33):
            with pytest.raises(BnnbenchError, match=rf"^method\.{key}={bad} "):
                create_method("dorefa", **{key: bad})


def test_shift_batchnorm_eps_inside_the_square_root_and_training_without_running_stats():
    from bnnbench.nn.shift import ShiftBatchNorm

    x = torch.tensor([[-2.0], [2.0]])  # C = +-2, var = 4
    # eps = 2: AP2(1 / sqrt(4 + 2)) = AP2(0.408) = 0.5 (1 / sqrt(4 - 2) would give 1)
    y = ShiftBatchNorm(1, eps=2.0, affine=False).train()(x)
    torch.testing.assert_close(y, torch.tensor([[-1.0], [1.0]]))
    bn = ShiftBatchNorm(1, affine=False, track_running_stats=False).train()
    torch.testing.assert_close(bn(x), torch.tensor([[-1.0], [1.0]]), atol=1e-5, rtol=0)
    assert bn.running_mean is None


def test_shift_adamax_default_lr_is_adamax_alpha():
    """Kingma & Ba 2015, Algorithm 2 (AdaMax): alpha = 0.002, beta1 = 0.9, beta2 = 0.999."""
    from bnnbench.nn.shift import ShiftAdamax

    defaults = ShiftAdamax([nn.Parameter(torch.zeros(1))]).defaults
    assert (defaults["lr"], defaults["betas"]) == (0.002, (0.9, 0.999))


def test_squared_hinge_loss_when_the_batch_lacks_the_last_class():
    from bnnbench.methods.base import squared_hinge_loss

    logits = torch.zeros(2, 4)
    # t has 4 entries per row whatever the batch's targets: 1 - t y = 1 everywhere
    assert squared_hinge_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(1.0)
    logits[:, 3] = 2.0  # the absent class's score counts: max(0, 1 + 2)^2 = 9
    assert squared_hinge_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(
        (3 + 9) / 4)


def test_bnn_stochastic_and_weight_grad_mask_knobs_reach_the_layers():
    torch.manual_seed(0)
    net = create_method("bnn", stochastic=True).convert(mlp()).train()
    layer = binary_layers(net)[0]
    with torch.no_grad():
        layer.weight.zero_()  # p(+1) = 1/2 for every weight
    assert 0.4 < (layer.quantized_weight() > 0).float().mean().item() < 0.6
    masked = binary_layers(create_method("bnn", weight_grad_mask=True).convert(mlp()))[0]
    with torch.no_grad():
        masked.weight.fill_(1.5)
        masked.weight[0].fill_(0.5)
    masked.quantized_weight().sum().backward()
    assert masked.weight.grad[0].eq(1).all() and masked.weight.grad[1:].eq(0).all()
