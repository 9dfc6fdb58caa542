"""Every learnable parameter a method adds to a host changes the network's output (issue 25).

A scale or shift that a following BatchNorm cancels trains to nothing and silently turns a
method into a simpler one (XNOR-Net++'s per-channel Gamma in front of a BatchNorm is BinaryNet
without a scale). For every method x host, each parameter the method adds is multiplied by
random positive factors in [0.2, 3.2], and the train-mode and the eval-mode outputs on a fixed
input must move.

Which parameters a method adds: those of the converted network that are neither a BatchNorm's
(normalisation is the host's, inserted ones included; they are set to trained-like values
below) nor a host parameter of the same name and shape, once the wrapper segment ``layer``
(``<name>.layer`` is where a method puts the host's layer when it wraps it) is dropped from the
name. So a latent weight copied into a quantized layer is the host's (a positive rescale of a
sign-binarized weight changes nothing by design), while scales, shifts, bases' betas, PReLU
slopes, RPReLU parameters and biases the host had no slot for are the method's.

The network is put in a trained-like state first, or the check would be blind:
- every BatchNorm's weight in [0.5, 1.5] and bias ~ N(0, 0.1) (timm zero-initialises each
  residual block's last BN weight, which hides the whole branch);
- an added parameter that is zero at init (RSign/RPReLU shifts, a bias) ~ N(0, 0.1), since a
  zero multiplied by any factor stays zero;
- running statistics = the statistics of a calibration batch (as a trained network's are
  close to its data's), then frozen (momentum 0), so that the train-mode forwards of the check
  do not move them under the eval-mode ones.
The forwards run in float64, so that a cancelled parameter moves the output by rounding only
(BatchNorm's eps leaves ~1e-5 of a per-channel scale), far below the floor a live one clears.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from bnnbench.methods import create_method, list_methods
from bnnbench.models import create_model

# small hosts: one forward of each is milliseconds (widths and fc sizes are knobs of the models;
# resnet18 and nin have none, so they get a small image instead, their stems adapt to it)
HOSTS: dict[str, tuple[int, dict]] = {
    "mlp": (28, dict(hidden_features=32)),
    "vgg_small": (16, dict(widths=[8, 16, 32], hidden_features=32)),
    "resnet18": (8, {}),
    "nin": (16, {}),
    "alexnet": (16, dict(fc_features=32)),
    "reactnet_a": (16, dict(width_multiplier=0.25)),
}
METHODS = [m for m in list_methods() if m != "fp"]  # fp adds nothing by definition
BATCH = 8
# relative output change (mean |delta| / mean |output|) below which a parameter counts as dead:
# cancelled parameters measure <= 1e-4 (BatchNorm's eps), live ones >= 1e-2
DEAD_BELOW = 1e-3

XFAIL: dict[tuple[str, str], pytest.MarkDecorator] = {
    # vgg_small's pooled blocks run conv -> pool -> BN: ReActNet's unit puts its RPReLU right
    # after the conv, so RPReLU's shift_out (a per-channel constant) passes the max-pool into the
    # host's BN, which removes it in train mode, and the max-pool hides the negative half the
    # slope acts on; the classifier's last unit's shift_out likewise reaches the output BN
    # through the FP Linear only. A finding for the methods' owners, not fixed here.
    ("reactnet", "vgg_small"): pytest.mark.xfail(
        strict=True, reason="reactnet on vgg_small: RPReLU before pool -> BN, its shift_out is "
                            "cancelled by that BN and its slope hidden by the max-pool"),
}
# single parameters in one mode, each with its reason
_POOLED_SLOPE = ("a PReLU before a 3x3 stride-2 max-pool: max-pool commutes with an increasing "
                 "map, so the slope acts only on windows whose max is negative, and on this "
                 "input in eval mode there are none; live in train mode")
EXEMPT: dict[tuple[str, str], dict[str, str]] = {
    ("xnorpp", "alexnet"): {"features.1.conv.act.weight (eval)": _POOLED_SLOPE,
                            "features.4.conv.act.weight (eval)": _POOLED_SLOPE},
}
BN = nn.modules.batchnorm._BatchNorm


def canonical(name: str) -> str:
    """A parameter's name with the wrapper segment ``layer`` dropped (timm's ``layer1`` stays)."""
    return ".".join(part for part in name.split(".") if part != "layer")


def added_parameters(host: nn.Module, net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters the method added to ``host`` (the rule in the module docstring)."""
    host_shapes = {canonical(n): p.shape for n, p in host.named_parameters()}
    modules = dict(net.named_modules())
    return [(n, p) for n, p in net.named_parameters()
            if not isinstance(modules[n.rpartition(".")[0]], BN)
            and host_shapes.get(canonical(n)) != p.shape]


def trained_like(net: nn.Module, params: list[tuple[str, nn.Parameter]], calib: Tensor,
                 g: torch.Generator) -> None:
    """BatchNorm affine in trained ranges, zero-init added parameters non-zero, running
    statistics from ``calib``, then frozen (the module docstring says why)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BN):
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype)
                                   + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one batch gives its exact statistics
        for _, p in params:
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        net.train()
        net(calib)
    for m in net.modules():
        if isinstance(m, BN):
            m.momentum = 0.0


def output(net: nn.Module, x: Tensor, train: bool) -> Tensor:
    net.train(train)
    torch.manual_seed(1)  # the same dropout masks in every train-mode forward
    with torch.no_grad():
        return net(x)


def relative_change(after: Tensor, before: Tensor) -> float:
    return ((after - before).abs().mean() / before.abs().mean()).item()


# hosts with millions of weights: every forward re-quantizes all of them (ABC-Net's least
# squares, XNOR-Net++'s and ReActNet's signs), which dominates the cost of a case
HEAVY = {"resnet18", "nin", "alexnet"}


def marks(method: str, host: str) -> list[pytest.MarkDecorator]:
    found = [XFAIL[(method, host)]] if (method, host) in XFAIL else []
    # ABC-Net's least-squares weight bases make each forward of reactnet_a's 26 convs costly too
    slow = host in HEAVY or (method, host) == ("abcnet", "reactnet_a")
    return found + ([pytest.mark.slow] if slow else [])


CASES = [pytest.param(method, host, marks=marks(method, host), id=f"{method}-{host}")
         for host in HOSTS for method in METHODS]


@pytest.mark.parametrize("method, host", CASES)
def test_every_added_parameter_changes_the_output(method: str, host: str) -> None:
    img, kwargs = HOSTS[host]
    torch.manual_seed(0)
    host_net = create_model(host, in_chans=1, num_classes=10, img_size=img, **kwargs)
    net = create_method(method).convert(copy.deepcopy(host_net)).double()
    params = added_parameters(host_net, net)
    g = torch.Generator().manual_seed(0)
    trained_like(net, params, torch.randn(4 * BATCH, 1, img, img, generator=g,
                                          dtype=torch.float64), g)
    x = torch.randn(BATCH, 1, img, img, generator=g, dtype=torch.float64)
    reference = {mode: output(net, x, mode) for mode in (True, False)}

    dead = []
    for name, p in params:
        original = p.detach().clone()
        factors = torch.rand(p.shape, generator=g, dtype=p.dtype) * 3.0 + 0.2
        # away from 1: a one-element parameter (a 1 x 1 map's beta) drawn near 1 hardly moves
        factors = torch.where((factors - 1).abs() < 0.3, factors + 0.6, factors)
        with torch.no_grad():
            p.mul_(factors)
        for mode in (True, False):
            change = relative_change(output(net, x, mode), reference[mode])
            where = f"{name} ({'train' if mode else 'eval'})"
            if change < DEAD_BELOW and where not in EXEMPT.get((method, host), {}):
                dead.append(f"{where} {change:.1e}")
        with torch.no_grad():
            p.copy_(original)
    assert not dead, f"{len(dead)} parameters of {len(params)} change nothing: {dead}"


def test_the_rule_finds_the_known_additions() -> None:
    """The added-parameter rule against counts written from the methods' papers, on mlp (two
    binary Linear layers of 32 units; first and last layers full precision): ReActNet adds an
    RSign shift and an RPReLU (3 vectors) per binary unit, ABC-Net N = 3 shifts and 3 betas per
    binary layer, XNOR-Net++ one Gamma and one PReLU (the strong baseline's) per binary Linear,
    BinaryNet nothing; no latent weight counts as added (torch names a PReLU's slope
    ``weight``)."""
    img, kwargs = HOSTS["mlp"]
    host = create_model("mlp", in_chans=1, num_classes=10, img_size=img, **kwargs)
    expected = {"reactnet": 2 * 4, "abcnet": 2 * 2, "xnorpp": 2 * 2, "bnn": 0}
    for method, count in expected.items():
        found = added_parameters(host, create_method(method).convert(copy.deepcopy(host)))
        assert len(found) == count, (method, [n for n, _ in found])
        assert not any(n.endswith("weight") and not n.endswith("act.weight")
                       for n, _ in found), method
