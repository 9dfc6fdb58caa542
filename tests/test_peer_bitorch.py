"""Peer check against bitorch (hpi-xnor/bitorch, a maintained BNN library): the same inputs through
its sign and DoReFa quantizers and ours, forward and gradient (issue 10, "Proof").

Forward values agree exactly. The gradients differ where the papers say they should, and each
difference is asserted, not hidden:
* sign: bitorch's STE passes the gradient everywhere; BinaryNet's activation STE cancels it where
  |x| > 1 (``sign_ste(cancel=True)``, Courbariaux et al. 2016 Eq. 4). With ``cancel=False`` (the
  authors' weight gradient) ours is bitorch's.
* DoReFa k-bit weights: bitorch's gradient is the identity; the paper's (Zhou et al. 2016
  Sec. 2.3, tensorpack's ``fw``) goes through tanh and the max: d/dW [tanh W / max|tanh W|].
* DoReFa 1-bit weights: bitorch applies the k-bit formula at k = 1 (an unscaled sign); the
  paper's 1-bit weights are sign(W) * mean|W| (one scalar per layer).
* DoReFa activations: bitorch's gradient is the identity; ours is the derivative of the clip,
  1{0 <= x <= 1} (the paper quantizes clip(x, 0, 1) with a straight-through round only).
"""

from __future__ import annotations

import pytest
import torch

from bnnbench import functional as BF

bitorch_q = pytest.importorskip(
    "bitorch.quantizations", reason="bitorch is not installed (pip install -e '.[dev]')")


def values() -> torch.Tensor:
    """Both signs, inside and outside [-1, 1] and [0, 1], no exact zeros (sign(0) conventions and
    round-half-to-even at 0.5 are compared separately)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 1.5
    return torch.where(x == 0, torch.full_like(x, 0.25), x)


def grad_of(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


def test_sign_forward_agrees_and_only_the_cancelled_gradient_differs():
    x = torch.cat([values().flatten(), torch.tensor([0.0, -0.0, 1.0, -1.0], dtype=torch.float64)])
    g = torch.linspace(-2, 3, x.numel(), dtype=torch.float64)
    y_peer, g_peer = grad_of(bitorch_q.Sign(), x, g)
    y_weight, g_weight = grad_of(lambda t: BF.sign_ste(t, cancel=False), x, g)
    y_act, g_act = grad_of(lambda t: BF.sign_ste(t, cancel=True), x, g)
    torch.testing.assert_close(y_weight, y_peer, rtol=0, atol=0)  # sign(0) = +1 in both
    torch.testing.assert_close(y_act, y_peer, rtol=0, atol=0)
    torch.testing.assert_close(g_weight, g_peer, rtol=0, atol=0)  # identity STE in both
    inside = x.abs() <= 1
    torch.testing.assert_close(g_act[inside], g_peer[inside], rtol=0, atol=0)
    assert bool((g_act[~inside] == 0).all()) and bool((g_peer[~inside] != 0).all())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_kbit_weight_forward_agrees_gradient_goes_through_tanh(bits):
    w = values()
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_peer, g_peer = grad_of(bitorch_q.WeightDoReFa(bits), w, g)
    y_ours, g_ours = grad_of(lambda t: BF.dorefa_weight(t, bits), w, g)
    torch.testing.assert_close(y_ours, y_peer, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_peer, g, rtol=0, atol=0)  # bitorch: identity
    # the paper: quantize_k is straight-through, so d W_q / dW = d/dW [tanh W / max|tanh W|]
    _, g_paper = grad_of(lambda t: torch.tanh(t) / torch.tanh(t).abs().max(), w, g)
    torch.testing.assert_close(g_ours, g_paper, rtol=1e-10, atol=1e-12)
    assert (g_ours - g_peer).abs().max() > 0.1


def test_dorefa_one_bit_weight_is_the_papers_scaled_sign():
    w = values()
    y_peer = bitorch_q.WeightDoReFa(1)(w)
    y_ours = BF.dorefa_weight(w, 1)
    torch.testing.assert_close(y_peer, torch.sign(w), rtol=0, atol=0)  # k-bit formula at k = 1
    torch.testing.assert_close(y_ours, torch.sign(w) * w.abs().mean(), rtol=0, atol=0)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_activation_forward_agrees_gradient_is_the_clips(bits):
    x = values() * 0.6 + 0.4  # spans below 0, [0, 1] and above 1
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y_peer, g_peer = grad_of(bitorch_q.InputDoReFa(bits), x, g)
    y_ours, g_ours = grad_of(lambda t: BF.dorefa_activation(t, bits), x, g)
    torch.testing.assert_close(y_ours, y_peer, rtol=0, atol=0)
    torch.testing.assert_close(g_peer, g, rtol=0, atol=0)  # bitorch: identity
    inside = (x >= 0) & (x <= 1)
    torch.testing.assert_close(g_ours, g * inside, rtol=0, atol=0)
    assert bool(inside.any()) and bool((~inside).any())
