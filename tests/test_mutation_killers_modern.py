"""Tests that kill surviving mutants of the newer methods (``--scope modern`` of
``python -m bnnbench.devtools.mutation``; see reports/mutation_modern.md).

Each asserts against an independent reference: a closed form or a value computed by hand here,
never the implementation's own pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnbench.methods.bireal import pooled_downsample


def test_pooled_downsample_is_avgpool_then_the_same_1x1_conv():
    """The authors' downsample AvgPool2d(2) -> 1x1 conv (stride 1) -> BN, from the host's strided
    1x1 conv: same weights, output = mean over each 2 x 2 window, then W x + b."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1, stride=2, bias=True)
    bn = nn.BatchNorm2d(4).eval()
    new = pooled_downsample(nn.Sequential(conv, bn)).eval()
    assert [type(m).__name__ for m in new] == ["AvgPool2d", "Conv2d", "BatchNorm2d"]
    assert new[1].stride == (1, 1) and new[2] is bn
    x = torch.randn(2, 3, 5, 5)  # odd: ceil mode keeps the strided conv's 3 x 3 output
    padded = F.pad(x, (0, 1, 0, 1))
    counts = F.pad(torch.ones(1, 1, 5, 5), (0, 1, 0, 1))
    means = (padded.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
             / counts.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)))
    w = conv.weight.detach().view(4, 3)
    want = torch.einsum("oc,nchw->nohw", w, means) + conv.bias.detach().view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(new[1](new[0](x)), want)
        assert new(x).shape == nn.Sequential(conv, bn).eval()(x).shape
    # nothing to pool: a stride-1 or a non-1x1 downsample is returned as it is
    same = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert pooled_downsample(same) is same
    wide = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4))
    assert pooled_downsample(wide) is wide


# --- bireal: which layers get a real shortcut, and which binary layer each one becomes ----------

def test_unit_shortcut_needs_the_exact_same_shape():
    """A shortcut only where the output has the input's shape at every size: odd kernel with
    (k - 1) / 2 zero padding, no dilation, equal strides, same channels (Linear: in == out)."""
    from bnnbench.methods.bireal import unit_shortcut

    assert isinstance(unit_shortcut(nn.Linear(5, 5)), nn.Identity)
    assert isinstance(unit_shortcut(nn.Conv2d(4, 4, (1, 3), padding=(0, 1))), nn.Identity)
    pool = unit_shortcut(nn.Conv2d(4, 4, 3, stride=3, padding=1))
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == pool.stride == 3
    assert pool.ceil_mode
    for conv in (nn.Conv2d(4, 4, 3, padding=1, dilation=2),      # dilated: the map shrinks
                 nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                 nn.Conv2d(4, 4, 3, stride=(2, 1), padding=1),  # unequal strides
                 nn.Conv2d(4, 4, 2, padding=1),                   # even kernel
                 nn.Conv2d(4, 4, 3, padding=2)):                  # too much padding: it grows
        assert unit_shortcut(conv) is None, conv
    assert unit_shortcut(nn.BatchNorm2d(4)) is None


def test_sign_layer_kinds():
    """The layer reading the image keeps real inputs; binary_weights=false keeps real weights;
    otherwise sign inputs (ApproxSign) and alpha sign(W) weights, the latent clip passed on."""
    from bnnbench.methods.bireal import sign_layer
    from bnnbench.nn.layers import QuantConv2d, QuantLinear
    from bnnbench.nn.modern_layers import ApproxSignQuantizer, SignConv2d, SignLinear

    first = sign_layer(nn.Conv2d(3, 4, 3), reads_image=True, weight_gradient="paper")
    assert type(first) is QuantConv2d and first.input_bits == 32 and first.weight_bits == 1
    step1 = sign_layer(nn.Linear(3, 4), reads_image=False, weight_gradient="code",
                       binary_weights=False)
    assert type(step1) is QuantLinear and step1.weight_bits == 32 and step1.input_bits == 1
    both = sign_layer(nn.Linear(3, 4), reads_image=False, weight_gradient="code",
                      latent_clip=0.5)
    assert type(both) is SignLinear and isinstance(both.input_quantizer, ApproxSignQuantizer)
    assert both.weight_quantizer.gradient == "code" and both.latent_clip == 0.5
    conv = sign_layer(nn.Conv2d(3, 4, 3), reads_image=False, weight_gradient="paper")
    assert type(conv) is SignConv2d and conv.weight_quantizer.gradient == "paper"
    assert conv.latent_clip is None


def test_bireal_knob_defaults():
    """Bi-Real: paper gradient, no clip, AvgPool downsample, real shortcuts; ReActNet: the
    authors' code gradient. A non-positive clip is refused."""
    from bnnbench.errors import BnnbenchError
    from bnnbench.methods import create_method

    bireal, react = create_method("bireal"), create_method("reactnet")
    assert (bireal.weight_gradient, react.weight_gradient) == ("paper", "code")
    for m in (bireal, react):
        assert m.latent_clip is None and m.avgpool_downsample is True and m.fp_shortcut is True
    assert create_method("bireal", weight_gradient="code").weight_gradient == "code"
    assert create_method("bireal", latent_clip=2.0).latent_clip == 2.0
    for bad in (0.0, -1.0):
        try:
            create_method("bireal", latent_clip=bad)
        except BnnbenchError as err:
            assert "method.latent_clip" in str(err)
        else:
            raise AssertionError(f"latent_clip={bad} was accepted")


def test_wrap_units_moves_the_following_batchnorm_into_the_unit():
    """A ConvBlock's bn right after its conv, or the next Sequential sibling, becomes the
    unit's norm and leaves its old place; a BN that does not follow directly stays."""
    from bnnbench.methods.bireal import wrap_units
    from bnnbench.nn.blocks import ConvBlock
    from bnnbench.nn.modern_layers import BinaryUnit

    bn_block, bn_seq, bn_far = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    net = nn.Sequential(ConvBlock(nn.Conv2d(4, 4, 3, padding=1), bn_block, nn.ReLU()),
                        nn.Conv2d(4, 4, 3, padding=1), bn_seq,
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), bn_far)
    wrap_units(net, ["0.conv", "1", "3"], lambda c: None, lambda c: None)
    assert isinstance(net[0].conv, BinaryUnit) and net[0].conv.norm is bn_block
    assert net[0].bn is None
    assert net[1].norm is bn_seq and isinstance(net[2], nn.Identity)
    assert isinstance(net[3].norm, nn.Identity) and net[5] is bn_far  # not right after
    assert all(isinstance(net[i].shortcut, nn.Identity) for i in (1, 3))


# --- modern layers ------------------------------------------------------------------------------

def test_binary_unit_adds_the_shortcut_before_the_activation():
    """act(norm(layer(shift(x))) + shortcut(x)); no shortcut: act(norm(layer(shift(x))))."""
    from bnnbench.nn.modern_layers import BinaryUnit

    layer = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(3) * 2)
    x = torch.tensor([[1.0, -2.0, 3.0]])
    shift = lambda: _Add(0.5)  # noqa: E731
    act = nn.ReLU()
    unit = BinaryUnit(layer, nn.Identity(), nn.Identity(), shift(), act)
    torch.testing.assert_close(unit(x), torch.relu(2 * (x + 0.5) + x))
    alone = BinaryUnit(layer, None, None, shift(), act)
    torch.testing.assert_close(alone(x), torch.relu(2 * (x + 0.5)))
    plain = BinaryUnit(layer)
    assert isinstance(plain.shift, nn.Identity) and isinstance(plain.act, nn.Identity)
    torch.testing.assert_close(plain(x), 2 * x)


class _Add(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return x + self.value


def test_gamma_linear_is_sign_product_times_alpha_plus_bias():
    """XNOR-Net++ on a Linear: Gamma = alpha (one per output), bias added after the scale."""
    from bnnbench.nn.modern_layers import GammaLinear
    from bnnbench.nn.quantizers import SignQuantizer

    fc = GammaLinear(3, 2, bias=True, weight_quantizer=SignQuantizer(cancel=False),
                     input_quantizer=SignQuantizer())
    assert fc.scale_height is None and torch.equal(fc.scale_channel.detach(), torch.ones(2))
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.3, -0.2, 0.0], [-1.0, 2.0, -0.1]]))
        fc.bias.copy_(torch.tensor([0.5, -1.0]))
        fc.scale_channel.copy_(torch.tensor([2.0, 3.0]))
    x = torch.tensor([[0.1, -0.4, 0.7]])  # signs +, -, +
    # rows: sign W = (+, -, +) . (+, -, +) = 3; (-, +, -) . (+, -, +) = -3
    torch.testing.assert_close(fc(x), torch.tensor([[3 * 2.0 + 0.5, -3 * 3.0 - 1.0]]))


def test_learnable_shift_and_rprelu_init():
    """RSign's shift starts at 0 (the plain sign), RPReLU at PReLU(0.25) with zero shifts."""
    from bnnbench.nn.modern_layers import LearnableShift, RPReLU

    shift = LearnableShift(3)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(shift(x), x)
    with torch.no_grad():
        shift.shift.copy_(torch.tensor([1.0, -2.0, 0.5]))
    torch.testing.assert_close(shift(x), x + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
    act = RPReLU(3)
    torch.testing.assert_close(act(x), torch.where(x > 0, x, 0.25 * x))
    assert act.slope.shape == act.shift_in.shape == act.shift_out.shape == (3,)
    flat = torch.tensor([[-4.0, 0.0, 2.0]])  # (N, C) inputs broadcast over dim 1 too
    torch.testing.assert_close(RPReLU(3, slope=0.5)(flat), torch.tensor([[-2.0, 0.0, 2.0]]))


# --- xnorpp: conversion ------------------------------------------------------------------------

def test_xnorpp_convert_starts_alpha_at_mean_abs_w_and_leaves_the_host_as_it_was():
    """alpha_o = mean |W_o| of the host's weights (XNOR-Net's scale); the size probe leaves the
    model in its mode (train) with no hook behind; Linear layers get no spatial scales."""
    from bnnbench.methods import create_method
    from bnnbench.models import create_model
    from bnnbench.nn.modern_layers import GammaConv2d, GammaLinear

    torch.manual_seed(0)
    host = create_model("vgg_small", in_chans=1, num_classes=10, img_size=16,
                        widths=(4, 8, 8), hidden_features=8).train()
    weights = {n: m.weight.detach().clone() for n, m in host.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    net = create_method("xnorpp").convert(host)
    assert net.training
    assert not any(m._forward_hooks for m in net.modules())
    gammas = {n.removesuffix(".layer"): m for n, m in net.named_modules()
              if isinstance(m, (GammaConv2d, GammaLinear))}
    assert len(gammas) == len(weights) - 2
    for name, layer in gammas.items():
        w = weights[name]
        want = torch.tensor([w[o].abs().sum().item() / w[o].numel() for o in range(w.shape[0])])
        torch.testing.assert_close(layer.scale_channel.detach(), want)
        if isinstance(layer, GammaLinear):
            assert layer.scale_height is None
    assert len(gammas["features.1.conv"].scale_height) == 16  # 3x3 padding 1 keeps 16 x 16
    assert len(gammas["features.2.conv"].scale_width) == 8    # after the first 2x2 pool


# --- recipes: warm start by name -----------------------------------------------------------------

def test_warm_start_copies_by_name_and_shape_only(tmp_path, monkeypatch):
    """Same name and shape: copied (cast to the target's dtype); a ``<name>.layer`` target takes
    ``<name>``; other shapes are kept and listed; weight-quantizer tensors and BatchNorm batch
    counters are neither copied nor listed. No shared tensor at all: one line."""
    from collections import OrderedDict

    import pytest

    import bnnbench.trained
    from bnnbench.errors import BnnbenchError
    from bnnbench.recipes import warm_start

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("t", torch.zeros(2))

    net = nn.Sequential(OrderedDict(
        a=nn.Linear(3, 2), bn=nn.BatchNorm1d(2),
        w=nn.Sequential(OrderedDict(norm=nn.BatchNorm1d(2), layer=nn.Linear(2, 2)))))
    net.a.weight_quantizer = Holder()
    source = {"a.weight": torch.full((2, 3), 2.0, dtype=torch.float64),
              "a.bias": torch.ones(3),                      # wrong shape: kept
              "a.weight_quantizer.t": torch.ones(2),        # never copied
              "bn.weight": torch.full((2,), 5.0), "bn.num_batches_tracked": torch.tensor(7),
              "w.weight": torch.full((2, 2), 3.0)}          # the wrapped layer's old name
    monkeypatch.setattr(bnnbench.trained, "load_checkpoint", lambda path: (source, None))
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    warm = warm_start(net, ckpt)
    assert warm.source == str(ckpt)
    assert sorted(warm.loaded) == ["a.weight", "bn.weight", "w.layer.weight"]
    assert sorted(warm.kept) == sorted(["a.bias", "bn.bias", "bn.running_mean", "bn.running_var",
                                        "w.norm.weight", "w.norm.bias", "w.norm.running_mean",
                                        "w.norm.running_var", "w.layer.bias"])
    state = net.state_dict()
    assert state["a.weight"].dtype == torch.float32 and torch.equal(state["a.weight"],
                                                                     torch.full((2, 3), 2.0))
    assert torch.equal(state["w.layer.weight"], torch.full((2, 2), 3.0))
    assert torch.equal(state["a.weight_quantizer.t"], torch.zeros(2))
    assert state["bn.num_batches_tracked"].item() == 0
    summary = warm.to_dict()
    assert summary == {"source": str(ckpt), "loaded": 3, "kept": 9,
                       "kept_names": warm.kept[:20]}
    many = type(warm)("s", [], [f"k{i}" for i in range(25)]).to_dict()
    assert many["kept_names"] == [f"k{i}" for i in range(20)] and many["kept"] == 25
    monkeypatch.setattr(bnnbench.trained, "load_checkpoint",
                        lambda path: ({"other.weight": torch.ones(1)}, None))
    with pytest.raises(BnnbenchError, match="shares no tensor") as info:
        warm_start(net, ckpt)
    assert "\n" not in str(info.value)
