"""Packed conv2d == F.conv2d(sign(x), sign(w)) with ZERO padding, exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnnbench.kernels as K
from bnnbench.kernels import reference as R

from ._util import rand_signs_source, sign, tdev

# (N, C, H, W, OC, KSIZE, stride, padding, groups): odd channel counts, stride 1 and 2,
# padding wider than 1, 1x1 and 5x5 kernels, AlexNet-style groups=2.
CASES = [
    (1, 3, 7, 9, 5, 3, 1, 1, 1),
    (2, 37, 6, 5, 7, 3, 2, 1, 1),
    (1, 37, 5, 5, 3, 3, 1, 2, 1),
    (1, 6, 6, 7, 4, 3, 2, 1, 2),
    (1, 70, 4, 4, 5, 1, 1, 0, 1),
    (1, 3, 9, 8, 4, 5, 2, 2, 1),
]
IDS = [f"n{c[0]}c{c[1]}h{c[2]}w{c[3]}o{c[4]}k{c[5]}s{c[6]}p{c[7]}g{c[8]}" for c in CASES]


def _case(nb, c, h, w, oc, ks, groups, seed=0):
    x = rand_signs_source((nb, c, h, w), seed=seed)
    wt = rand_signs_source((oc, c // groups, ks, ks), seed=seed + 1)
    return x, wt


def _expected(x, wt, stride, padding, groups):
    return F.conv2d(sign(x), sign(wt), stride=stride, padding=padding, groups=groups)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_conv_matches_torch(case, backend):
    nb, c, h, w, oc, ks, s, p, g = case
    x, wt = _case(nb, c, h, w, oc, ks, g)
    y = K.binary_conv2d(x, K.pack_conv_weight(wt), stride=s, padding=p, groups=g, backend=backend)
    want = _expected(x, wt, s, p, g)
    assert y.shape == want.shape and y.dtype == x.dtype
    assert torch.equal(y.double(), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("path", ["popcount", "dot"])
def test_conv_triton_paths(case, path):
    from bnnbench.kernels import triton_kernels as T

    nb, c, h, w, oc, ks, s, p, g = case
    x, wt = _case(nb, c, h, w, oc, ks, g)
    y = T.binary_conv2d(*tdev(x, K.pack_conv_weight(wt)), stride=(s, s), padding=(p, p),
                        groups=g, path=path).cpu()
    assert torch.equal(y.double(), _expected(x, wt, s, p, g))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_conv_scale_bias_and_dtype(backend):
    x, wt = _case(1, 5, 5, 6, 4, 3, 1)
    scale, bias = torch.rand(4) + 0.5, torch.randn(4)
    want = _expected(x, wt, 1, 1, 1) * scale.double()[:, None, None] + bias.double()[:, None, None]
    wp = K.pack_conv_weight(wt)
    if backend == "triton":
        x, wp, scale, bias = tdev(x, wp, scale, bias)
    y = K.binary_conv2d(x, wp, scale, bias, padding=1, backend=backend).cpu()
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-5)
    y16 = K.binary_conv2d(x.half(), wp, scale, bias, padding=1, backend=backend).cpu()
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.double(), want, rtol=2e-3, atol=2e-3)


def test_zero_padding_is_not_pm1_padding():
    """Sanity: the packed conv is the zero-padded function, not -1 (bit 1) or +1 (bit 0) padding."""
    x, wt = _case(1, 37, 5, 5, 6, 3, 1)
    y = K.binary_conv2d(x, K.pack_conv_weight(wt), padding=1).double()
    for pad_value in (-1.0, 1.0):
        xp = F.pad(sign(x), (1, 1, 1, 1), value=pad_value)
        assert not torch.equal(y, F.conv2d(xp, sign(wt)))
    assert torch.equal(y, _expected(x, wt, 1, 1, 1))


def test_conv_weight_pack_roundtrip():
    wt = rand_signs_source((5, 37, 3, 2))
    wp = K.pack_conv_weight(wt)
    assert wp.shape == (5, 3, 2, 2) and wp.dtype == torch.int32
    assert torch.equal(R.unpack_conv_weight_ref(wp, 37, torch.float64), sign(wt))


def test_conv_string_padding():
    """nn.Conv2d's padding='same' / 'valid' (odd kernels, stride 1) map to symmetric zero pads."""
    x, wt = _case(1, 5, 6, 7, 3, 3, 1)
    wp = K.pack_conv_weight(wt)
    assert torch.equal(K.binary_conv2d(x, wp, padding="same").double(), _expected(x, wt, 1, 1, 1))
    assert torch.equal(K.binary_conv2d(x, wp, padding="valid").double(), _expected(x, wt, 1, 0, 1))
