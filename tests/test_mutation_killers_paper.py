"""Tests that kill the survivors of the ``paper`` mutation scope (reports/mutation_paper.md:
XNOR-Net, Tang et al., ABC-Net and their quantizers), each against a reference worked out from the
paper by hand, never by calling the implementation's own helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class
from torch import nn

from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.nn.layers import QuantConv2d, is_quantized, quantized_layers
from bnnbench.nn.paper_quantizers import ABCActivationQuantizer, ABCWeightQuantizer, \
    DoReFaActivationQuantizer, DoReFaWeightQuantizer, ResidualSignQuantizer, check_bits
from tests.conftest import ROOT

MNIST = {"in_chans": 1, "num_classes": 10, "img_size": 28}


# --- ABC-Net activations at initialization: the (N + 1)-level uniform quantizer ------------------

@pytest.mark.parametrize("num", [1, 2, 3, 5])
def test_abc_activation_starts_as_the_uniform_quantizer_of_clip_x(num):
    """[ABC] Sec. 3.2 with the initial shifts and betas = 1/N: sum_n (1/N) H_{v_n}(x), H = +-1,
    is the nearest of the N + 1 levels -1 + 2k/N to clip(x, -1, 1) (thresholds at the midpoints
    -1 + (2k - 1)/N). The grid avoids the midpoints, where the rounding would be a tie."""
    x = torch.linspace(-1.7, 1.7, 341) + 1e-3
    k = torch.clamp(torch.floor((x.clamp(-1, 1) + 1) * num / 2 + 0.5), 0, num)
    expected = -1 + 2 * k / num
    torch.testing.assert_close(ABCActivationQuantizer(num)(x), expected)


# --- ABC-Net weights: the module passes its channel-wise and gradient choices on --------------

def test_abc_weight_module_channelwise_fits_each_output_channel_alone():
    """channelwise=True: each output channel gets its own bases and alphas, so scaling another
    channel by 100 leaves channel 0's approximation unchanged; per layer it does not."""
    torch.manual_seed(0)
    w0 = torch.randn(1, 3, 3, 3)
    both = torch.cat([w0, 100 * torch.randn(1, 3, 3, 3)])
    per_channel = ABCWeightQuantizer(3, channelwise=True)
    torch.testing.assert_close(per_channel(both)[0], per_channel(w0)[0])
    per_layer = ABCWeightQuantizer(3)
    assert not torch.allclose(per_layer(both)[0], per_layer(w0)[0], atol=1e-3)


def test_abc_weight_module_alpha_grad_scales_the_gradient_by_alpha():
    """[ABC] Sec. 3.1 with M = 1: W~ = alpha B, B = sign(W - mean W), alpha = <B, W> / n (least
    squares); alpha_grad=True gives dL/dW = alpha dL/dW~, the straight-through default dL/dW~."""
    torch.manual_seed(1)
    w, g = torch.randn(4, 6), torch.randn(4, 6)
    b = torch.where(w - w.mean() >= 0, 1.0, -1.0)
    alpha = (b * w).sum() / w.numel()
    for quantizer, scale in ((ABCWeightQuantizer(1, alpha_grad=True), alpha),
                             (ABCWeightQuantizer(1, alpha_grad=False), 1.0),
                             (ABCWeightQuantizer(1), 1.0)):  # the default: straight through
        latent = w.clone().requires_grad_(True)
        (quantizer(latent) * g).sum().backward()
        torch.testing.assert_close(latent.grad, scale * g)


# --- Tang et al.: one alpha per batch tensor by default ------------------------------------------

def test_residual_sign_default_is_one_alpha_per_batch_tensor():
    """Tang et al. 2017 Sec. 3.2 (m = 1): alpha = mean|x| over the whole activation tensor, so
    rows [1, -1] and [3, -3] share alpha = 2; per_sample=True gives each row its own."""
    x = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    quantizer = ResidualSignQuantizer(1)
    torch.testing.assert_close(quantizer(x), torch.tensor([[2.0, -2.0], [2.0, -2.0]]))
    assert quantizer.last_alphas is not None
    torch.testing.assert_close(quantizer.last_alphas.flatten(), torch.tensor([2.0]))
    torch.testing.assert_close(ResidualSignQuantizer(1, per_sample=True)(x), x)


# --- bit widths: one line for what the paper cannot mean -------------------------------------

@pytest.mark.parametrize("make, key", [(DoReFaWeightQuantizer, "method.w_bits"),
                                       (DoReFaActivationQuantizer, "method.a_bits")])
def test_dorefa_bits_above_32_are_refused_by_name(make, key):
    make(32)
    with pytest.raises(BnnbenchError, match=rf"^{key}=33 is out of range: need an integer >= 1 "
                                            r"and <= 32$"):
        make(33)


@pytest.mark.parametrize("value", [True, False, 0, 2.0, "2"])
def test_check_bits_refuses_what_is_not_a_positive_int(value):
    with pytest.raises(BnnbenchError, match=r"^k=.* is out of range: need an integer >= 1$"):
        check_bits("k", value)


def test_dorefa_one_bit_weights_store_one_scale_per_tensor():
    """DoReFa Eq. 7: 1-bit weights are E(|W|) sign(W), one float per layer to deploy; k > 1 bits
    are (2 quantize_k(...) - 1) with no scale."""
    assert DoReFaWeightQuantizer(1).scales_per_tensor == 1
    assert DoReFaWeightQuantizer(2).scales_per_tensor == 0


# --- a method built in Python is the shipped config's method ------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "method").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_python_defaults_build_the_shipped_config(path: Path):
    """``XnorNet()`` in a notebook must be ``+method=xnor``: the method built with no argument
    holds the same knobs as the one the shipped YAML builds (a default changed in either place
    is a silent second recipe). Compared on the built objects, not on signatures."""
    config = yaml.safe_load(path.read_text())["method"]
    knobs = {k: v for k, v in config.items() if k != "_target_"}
    cls = get_class(config["_target_"])
    assert vars(cls()) == vars(cls(**knobs))


# --- fp_shortcut on ResNets: the 1x1 downsample convolutions stay full precision --------------

@pytest.mark.parametrize("method", ["xnor", "abcnet"])
def test_fp_shortcut_keeps_the_downsample_convs_real(method):
    def binary_names(fp_shortcut: bool) -> set[str]:
        net = create_model("resnet18", in_chans=3, num_classes=10, img_size=32)
        net = create_method(method, fp_shortcut=fp_shortcut).convert(net)
        return {name for name, layer in quantized_layers(net) if is_quantized(layer)}

    downsample = {n for n in binary_names(False) if "downsample" in n}
    assert len(downsample) == 3  # ResNet-18: layer2, layer3, layer4
    assert binary_names(True) == binary_names(False) - downsample


# --- QuantConv2d keeps the float layer's geometry ---------------------------------------------

def test_quant_conv_defaults_are_nn_conv2d_defaults():
    """Built directly, QuantConv2d(2, 3, 3) is nn.Conv2d(2, 3, 3): stride 1, no padding, no
    dilation, one group, a bias."""
    quant, conv = QuantConv2d(2, 3, 3), nn.Conv2d(2, 3, 3)
    assert (quant.stride, quant.padding, quant.dilation, quant.groups) == (
        conv.stride, conv.padding, conv.dilation, conv.groups) == ((1, 1), (0, 0), (1, 1), 1)
    assert quant.bias is not None and quant.bias.shape == (3,)


def test_quant_conv_from_a_dilated_grouped_conv_keeps_its_geometry():
    """A dilated, grouped conv stays dilated and grouped: with identity quantizers the binary
    layer's output is the float layer's."""
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
    quant = QuantConv2d.from_float(conv)
    x = torch.randn(2, 4, 11, 11)
    assert (quant.dilation, quant.groups, quant.stride, quant.padding) == ((2, 2), 2, (2, 2),
                                                                          (2, 2))
    torch.testing.assert_close(quant(x), conv(x))
