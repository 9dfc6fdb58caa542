"""Bop (``optimizer=bop``) and ReActNet's linear decay (``scheduler=linear``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.nn.layers import quantized_layers
from bnnbench.optimizers import Bop, binary_weights, split_binary_groups
from bnnbench.schedulers import LinearDecay
from tests.conftest import FAST


def mlp(hidden: int = 32, img_size: int = 28) -> torch.nn.Module:
    return create_model("mlp", in_chans=1, num_classes=10, img_size=img_size,
                        hidden_features=hidden)


# ------------------------------------------------------------------------------------------ Bop
def test_bop_flips_where_the_gradient_average_passes_the_threshold_in_the_flip_direction():
    """Two steps, by hand: gamma 0.5, tau 0.1. Latent values become their signs (0 -> +1)."""
    w = torch.nn.Parameter(torch.tensor([0.3, -2.0, 0.0, -0.1, 5.0], dtype=torch.float64))
    opt = Bop([{"params": [w], "binary": True}], lr=1e-3, gamma=0.5, threshold=0.1)
    assert w.tolist() == [1, -1, 1, -1, 1]
    assert opt.param_groups[0]["lr"] == 0.5  # a binary group's lr is gamma

    # m = 0.5 * g = [0.2, 0.2, -0.2, -0.05, 0.05]: only w0 (+1, m > 0.1 and positive) flips;
    # w1 has m of the other sign, w3/w4 |m| below tau
    w.grad = torch.tensor([0.4, 0.4, -0.4, -0.1, 0.1], dtype=torch.float64)
    opt.step()
    assert w.tolist() == [-1, -1, 1, -1, 1]
    torch.testing.assert_close(opt.state[w]["m"],
                               torch.tensor([0.2, 0.2, -0.2, -0.05, 0.05], dtype=torch.float64))

    # m = 0.5 m + 0.5 g = [0.1, 0.1, -0.2, -0.225, 0.025]: w3 (-1, m -0.225) flips; w0's m is
    # exactly tau (not above it) and w2's has the other sign
    w.grad = torch.tensor([0.0, 0.0, -0.2, -0.4, 0.0], dtype=torch.float64)
    opt.step()
    assert w.tolist() == [-1, -1, 1, 1, 1]
    torch.testing.assert_close(opt.state[w]["m"], torch.tensor(
        [0.1, 0.1, -0.2, -0.225, 0.025], dtype=torch.float64))


def test_bop_trains_real_parameters_as_torch_adam_does():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    bias_a = torch.nn.Parameter(torch.randn(3))
    bias_b = torch.nn.Parameter(bias_a.detach().clone())
    ours = Bop([{"params": [a], "weight_decay": 0.01}, {"params": [bias_a]}], lr=0.05,
               betas=(0.8, 0.95), eps=1e-6)
    ref = torch.optim.Adam([{"params": [b], "weight_decay": 0.01}, {"params": [bias_b]}],
                           lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    for _ in range(5):
        g, h = torch.randn(4, 3), torch.randn(3)
        a.grad, b.grad, bias_a.grad, bias_b.grad = g, g.clone(), h, h.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(bias_a, bias_b)


def test_bop_groups_hold_exactly_the_binary_layers_latent_weights(make_cfg):
    """Through BNNModule and the method's param_groups (BinaryNet's Glorot lr scales): every
    binary latent weight in a Bop group at lr gamma, the rest at Adam's lr x its scale."""
    from hydra.utils import instantiate

    from bnnbench.lit import BNNModule

    cfg = make_cfg(["+method=bnn", "optimizer=bop", "optimizer.gamma=1e-3"])
    method = instantiate(cfg.method)
    net = method.convert(mlp())
    module = BNNModule(net, method, optimizer=instantiate(cfg.optimizer))
    optimizer = module.configure_optimizers()
    binary = {id(layer.weight) for _, layer in quantized_layers(net)
              if layer.weight_bits == 1}
    assert binary  # bnn keeps the first and last layers real: the hidden ones are binary
    flipped = {id(p) for g in optimizer.param_groups if g["binary"] for p in g["params"]}
    assert flipped == binary
    for group in optimizer.param_groups:
        if group["binary"]:
            assert group["lr"] == 1e-3
        else:
            assert group["lr"] == pytest.approx(cfg.optimizer.lr)  # the real parameters' group
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


@pytest.mark.parametrize("method, knobs, message", [
    ("fp", {}, "has none"),
    ("reactnet", {"binary_weights": False}, "has none"),
    ("abcnet", {}, "ABCWeightQuantizer"),
    ("dorefa", {"w_bits": 2}, "DoReFaWeightQuantizer"),
    ("bireal", {"weight_gradient": "paper"}, "method.weight_gradient=code"),
    ("bnn", {"stochastic": True}, "method.stochastic=false"),
    ("bwn", {"mean_center": True}, "method.mean_center=false"),
])
def test_bop_refuses_methods_without_flippable_sign_weights(method, knobs, message):
    m = create_method(method, **knobs)
    net = m.convert(mlp())
    with pytest.raises(BnnbenchError, match=message) as info:
        split_binary_groups(m.param_groups(net), net, m)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method, knobs", [
    ("bnn", {}), ("binaryconnect", {}), ("xnor", {}), ("bwn", {}), ("xnorpp", {}),
    ("tang", {}), ("reactnet", {}), ("bireal", {"weight_gradient": "code"}),
    ("dorefa", {"w_bits": 1}),
])
def test_bop_takes_every_method_with_sign_weights(method, knobs):
    m = create_method(method, **knobs)
    net = m.convert(mlp())
    assert len(binary_weights(net, m)) >= 1


@pytest.mark.parametrize("method", ["xnor", "bwn"])
def test_bop_on_scaled_sign_layers_averages_the_gradient_of_the_binary_weight(method):
    """Helwegen et al. Algorithm 2 on an XNOR-Net / BWN layer: ``m = gamma * g`` after one step
    from ``m = 0``, with ``g = dL/dW_b`` the gradient of the binary weight (larq's
    ``MagnitudeAwareSign`` stops the gradient through mean|W|, which is 1 for +-1 weights). The
    reference ``g = G^T x`` is written by hand for a Linear ``y = x W_b^T (+ b)`` with a known
    upstream gradient ``G`` and inputs of +-1 (so XNOR-Net's sign(x) is x and its K = mean|x| is
    1). Then a weight flips exactly where ``|m| > tau`` and ``sign(m) = w``."""
    torch.manual_seed(0)
    m = create_method(method)
    net = m.convert(mlp(hidden=24))
    name, layer = [(n, layer) for n, layer in quantized_layers(net)
                   if layer.weight_quantizer.precision == 1][0]
    gamma = 0.25
    opt = Bop(split_binary_groups(m.param_groups(net), net, m), lr=1e-3, gamma=gamma,
              threshold=0.0)
    w0 = layer.weight.detach().clone()
    assert torch.equal(w0.abs(), torch.ones_like(w0)), name
    x = torch.randint(0, 2, (6, layer.in_features), dtype=torch.float32) * 2 - 1
    upstream = torch.randn(6, layer.out_features)
    layer.eval()(x).backward(upstream)  # eval: no input dropout (the weight path is the same)
    g = upstream.T @ x  # dL/dW_b for y = x W_b^T

    m_expected = gamma * g
    tau = m_expected.abs().median().item()  # about half the weights pass the threshold
    for group in opt.param_groups:
        group["threshold"] = tau
    others = [p for p in net.parameters() if p is not layer.weight]
    for p in others:
        p.grad = None
    opt.step()
    torch.testing.assert_close(opt.state[layer.weight]["m"], m_expected)
    flips = (m_expected.abs() > tau) & (torch.sign(m_expected) == w0)
    assert 0 < int(flips.sum()) < flips.numel()
    torch.testing.assert_close(layer.weight.detach(), torch.where(flips, -w0, w0))


@pytest.mark.slow
def test_bop_fit_learns_digits():
    """A short fit with Bop on the binary layers (sklearn's 8x8 digits, 60 steps): training
    accuracy far above chance, every binary weight still +-1, and weights did flip."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(y_np)
    method = create_method("bnn", lr_scale=False)
    net = method.convert(mlp(hidden=64, img_size=8))
    groups = split_binary_groups(method.param_groups(net), net, method)
    opt = Bop(groups, lr=1e-2, gamma=1e-2, threshold=1e-6)
    weights = binary_weights(net, method)
    start = [w.detach().clone() for w in weights]

    def accuracy() -> float:
        net.eval()
        with torch.no_grad():
            return (net(x).argmax(-1) == y).float().mean().item()

    before = accuracy()
    for _ in range(60):
        net.train()
        idx = torch.randint(0, len(y), (128,))
        loss = method.loss(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step(net)
    after = accuracy()
    assert after > 0.6 and after > before + 0.3, (before, after)
    assert all(torch.equal(w.abs(), torch.ones_like(w)) for w in weights)
    flipped = sum(int((w != s).sum()) for w, s in zip(weights, start))
    assert flipped > 0


def test_bop_without_binary_weights_is_one_line_from_the_cli(make_cfg):
    from bnnbench.train import run

    with pytest.raises(BnnbenchError, match="optimizer=adam") as info:
        run(make_cfg([*FAST, "model.hidden_features=16", "+method=abcnet", "optimizer=bop"]))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------- linear decay
def test_linear_decay_follows_the_closed_form_per_group():
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.1}], lr=0.5)
    scheduler = LinearDecay(opt, total_steps=8)
    for t in range(11):
        want = max(0.0, 1 - t / 8)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * want, abs=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * want, abs=1e-12)
        opt.step()
        scheduler.step()


def test_linear_decay_refuses_a_bad_total():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(BnnbenchError, match="scheduler.total_steps"):
        LinearDecay(opt, total_steps=0)


@pytest.mark.slow
def test_bop_with_linear_decay_trains_from_the_cli(make_cfg):
    """``+method=bnn optimizer=bop scheduler=linear``: 2 epochs x 3 batches = 6 steps; the
    schedule steps per batch over the run's 6 steps (Adam's lr and Bop's gamma end at 0), and
    the checkpoint's binary weights are +-1."""
    from bnnbench.train import run
    from bnnbench.trained import load_checkpoint

    run(make_cfg([*FAST, "trainer.max_epochs=2", "model.hidden_features=16", "+method=bnn",
                  "method.lr_scale=false", "optimizer=bop", "scheduler=linear"]))
    last = Path(HydraConfig.get().runtime.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    (schedule,) = ckpt["lr_schedulers"]
    assert schedule["total_steps"] == 6 and schedule["last_epoch"] == 6
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert {g["binary"] for g in groups} == {True, False}
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-12) for g in groups)
    state, _ = load_checkpoint(last)
    hidden = [k for k in state if k.endswith("weight") and state[k].dim() == 2][1:-1]
    assert hidden and all(torch.equal(state[k].abs(), torch.ones_like(state[k]))
                          for k in hidden)
