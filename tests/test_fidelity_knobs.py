"""Knobs that make a paper's / its authors' exact setting one config away (issue 10, "Deviations
worth a knob"). Each test checks the knob against a reference written here from the authors'
code or the paper, and checks that the default differs where the knob is meant to change
something (so the test can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnnbench import functional as BF
from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.nn.layers import is_quantized, quantized_layers
from tests.conftest import CONF


def tiny(host: str) -> nn.Module:
    kw = {"mlp": {"hidden_features": 256}, "alexnet": {"fc_features": 32},
          "vgg_small": {"widths": [8, 16, 32], "hidden_features": 16}}.get(host, {})
    chans, size = (1, 28) if host == "mlp" else (3, 32)
    return create_model(host, in_chans=chans, num_classes=10, img_size=size, **kw)


def binary(net: nn.Module) -> list[nn.Module]:
    return [layer for _, layer in quantized_layers(net) if is_quantized(layer)]


# --- BinaryNet / BinaryConnect: U(-H, H) latent init (binary_net.py: W = Uniform((-H, H))) -----

@pytest.mark.parametrize("method, knobs, bound", [
    ("bnn", {"fp_first": False, "fp_last": False}, 1.0),
    ("bnn", {}, 1.0),  # first and last FP: they keep the host's init
    ("binaryconnect", {}, 1.0),
    ("binaryconnect", {"latent_clip": 0.5}, 0.5),
])
def test_uniform_latent_init_is_the_authors(method, knobs, bound):
    torch.manual_seed(0)
    host = tiny("mlp")
    before = {n: m.weight.detach().clone() for n, m in host.named_modules()
              if isinstance(m, nn.Linear)}
    net = create_method(method, latent_init="uniform", **knobs).convert(host)
    layers = binary(net)
    assert layers
    for layer in layers:
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        # U(-H, H): |w| / H is U(0, 1): mean 1/2, a quarter of the mass above 3/4
        assert (w.abs() / bound).mean().item() == pytest.approx(0.5, abs=0.03)
        assert ((w.abs() / bound) > 0.75).float().mean().item() == pytest.approx(0.25, abs=0.03)
        assert layer.bias is None or bool((layer.bias == 0).all())
    for name, module in net.named_modules():  # full-precision layers: the host's init
        if type(module) is nn.Linear:
            torch.testing.assert_close(module.weight.detach(), before[name])
    default = create_method(method, **knobs).convert(tiny("mlp"))
    # the host's (Kaiming-uniform) init is far smaller: the knob changes something
    assert all(layer.weight.abs().max() < 0.2 for layer in binary(default))


def test_latent_init_rejects_unknown_values_on_one_line():
    with pytest.raises(BnnbenchError, match="method.latent_init") as info:
        create_method("bnn", latent_init="glorot")
    assert "\n" not in str(info.value)


# --- XNOR / BWN: meancenterConvParms then clampConvParms (allenai/XNOR-Net util.lua) -----------

def authors_projection(w: np.ndarray, center: bool) -> np.ndarray:
    """util.lua: weight:add(-weight:mean(2)) over Torch's input-plane dim, then clamp(-1, 1)."""
    if center:
        w = w - w.mean(axis=1, keepdims=True)
    return np.clip(w, -1, 1)


@pytest.mark.parametrize("method", ["xnor", "bwn"])
@pytest.mark.parametrize("center", [True, False])
def test_mean_centering_and_clamp_follow_the_authors(method, center):
    torch.manual_seed(0)
    net = create_method(method, mean_center=center).convert(tiny("alexnet"))
    layers = binary(net)
    assert len(layers) == 6
    if center:  # convert projects once: the first forward sees centered weights, as theirs
        for layer in layers:
            assert layer.weight.mean(dim=1).abs().max() < 1e-6
    fp = [m for m in net.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert len(fp) == 2  # first conv and classifier stay full precision
    raw = {}
    with torch.no_grad():
        for i, layer in enumerate(layers + fp):  # as after an optimizer step: large, off-centre
            layer.weight.copy_(torch.randn_like(layer.weight) * 1.5 + 0.4 * (-1) ** i)
            raw[id(layer)] = layer.weight.detach().double().numpy().copy()
    create_method(method, mean_center=center).after_optimizer_step(net)
    for layer in layers:
        expected = authors_projection(raw[id(layer)], center)
        np.testing.assert_allclose(layer.weight.detach().double().numpy(), expected, atol=1e-6)
    for layer in fp:  # the authors project convNodes 2 .. n-1 only
        np.testing.assert_array_equal(layer.weight.detach().double().numpy(), raw[id(layer)])


# --- XNOR: non-affine BatchNorm in the binary blocks (alexnetxnor.lua: BN(n, 1e-4, false)) -------

def binary_layer_inputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
               for layer in binary(net)]
    net.train()(x)
    for handle in handles:
        handle.remove()
    return seen


def standardized(x: torch.Tensor) -> bool:
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    mean, var = x.mean(dims), x.var(dims, correction=0)
    return bool(mean.abs().max() < 1e-3) and bool((var - 1).abs().max() < 2e-2)


@pytest.mark.parametrize("host", ["alexnet", "resnet18", "mlp", "vgg_small"])
def test_non_affine_bn_feeds_every_xnor_binary_layer(host):
    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28) if host == "mlp" else torch.randn(16, 3, 32, 32)
    for affine in (False, True):
        net = create_method("xnor", affine_bn=affine).convert(tiny(host))
        with torch.no_grad():  # a trained-looking gamma/beta on every BN that still has them
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                    module.weight.fill_(3.0)
                    module.bias.fill_(0.7)
        inputs = binary_layer_inputs(net, x)
        assert len(inputs) == len(binary(net)) > 0
        # non-affine: every binary layer binarizes (x - mean) / std; affine: 3 (...) + 0.7
        assert all(standardized(i) for i in inputs) is (not affine)
        assert any(standardized(i) for i in inputs) is (not affine)


# --- ABC-Net: channel-wise bases and the paper's gradient through the bases ---------------------

def reference_bases(w: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Sec. 3.1 on one tensor: B_i = sign(W - mean + u_i std), alpha = lstsq(B, vec W)."""
    u = [0.0] if m == 1 else [-1 + i * 2 / (m - 1) for i in range(m)]
    flat = w.reshape(-1)
    bases = np.stack([np.where(flat - flat.mean() + ui * flat.std() >= 0, 1.0, -1.0) for ui in u])
    alphas = np.linalg.lstsq(bases.T, flat, rcond=None)[0]
    return bases.reshape(m, *w.shape), alphas


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("channelwise", [False, True])
@pytest.mark.parametrize("alpha_grad", [False, True])
def test_abc_weight_channelwise_and_alpha_gradient(m, channelwise, alpha_grad):
    torch.manual_seed(m)
    w = (torch.randn(6, 4, 3, 3, dtype=torch.float64) * torch.linspace(0.2, 2, 6).view(6, 1, 1, 1)
         + torch.linspace(-0.5, 0.5, 6).view(6, 1, 1, 1)).requires_grad_()
    wn = w.detach().numpy()
    if channelwise:
        fits = [reference_bases(wn[o], m) for o in range(6)]
        expected = np.stack([np.tensordot(a, b, axes=1) for b, a in fits])
        alpha_sum = np.array([a.sum() for _, a in fits]).reshape(6, 1, 1, 1)
    else:
        b, a = reference_bases(wn, m)
        expected, alpha_sum = np.tensordot(a, b, axes=1), a.sum()
    y = BF.abc_weight(w, m, channelwise=channelwise, alpha_grad=alpha_grad)
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-9)
    g = torch.randn_like(w)
    y.backward(g)
    scale = alpha_sum if alpha_grad else 1.0
    np.testing.assert_allclose(w.grad.numpy(), g.numpy() * scale, atol=1e-9)
    if m > 1:  # per-channel fits differ from the whole-tensor fit on this weight
        whole = BF.abc_weight(w.detach(), m)
        assert bool((whole - y.detach()).abs().max() > 1e-3) is channelwise


def test_abcnet_knobs_reach_every_binary_layer_and_the_size_accounting():
    net = create_method("abcnet", weight_bases=2, channelwise=True,
                        alpha_grad=True).convert(tiny("alexnet"))
    quantizers = [layer.weight_quantizer for layer in binary(net)]
    assert len(quantizers) == 6
    for q in quantizers:
        assert (q.channelwise, q.alpha_grad) == (True, True)
        assert (q.scales_per_channel, q.scales_per_tensor) == (2, 0)  # M floats per channel
    plain = create_method("abcnet", weight_bases=2).convert(tiny("alexnet"))
    assert {(layer.weight_quantizer.scales_per_channel, layer.weight_quantizer.scales_per_tensor)
            for layer in binary(plain)} == {(0, 2)}


def test_abcnet_grid_has_the_papers_weight_only_and_m2_rows():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.load(CONF / "sweep" / "abcnet_grid.yaml").hydra.sweeper.params
    parser = OverridesParser.create()
    values = {key: list(parser.parse_override(f"{key}={value}").sweep_iterator())
              for key, value in params.items()}
    assert set(values["method.weight_bases"]) == {1, 2, 3, 5}
    assert set(values["method.activation_bases"]) == {1, 3, 5, None}
    assert create_method("abcnet", weight_bases=2, activation_bases=None) is not None


# --- the new knobs survive a packed export (the spec rebuilds the same network) ------------------

@pytest.mark.parametrize("overrides", [
    ["+method=abcnet", "method.channelwise=true", "method.alpha_grad=true"],
    ["+method=xnor", "method.affine_bn=false", "method.mean_center=true"],
    ["+method=bnn", "method.latent_init=uniform", "method.fp_first=false"],
])
def test_new_knobs_round_trip_through_the_packed_export(overrides, make_cfg, tmp_path,
                                                       monkeypatch):
    from bnnbench.packed.format import load_packed
    from bnnbench.models import registry
    from tests.test_export import tiny_convnet, tiny_export

    monkeypatch.setitem(registry._MODELS, "tiny_convnet", tiny_convnet)
    net, path = tiny_export(make_cfg, tmp_path, overrides)
    packed = load_packed(path, kernels="never")
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(packed(x), net(x))
