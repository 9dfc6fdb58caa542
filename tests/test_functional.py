"""bnnbench.functional: values and gradients against closed forms, odd shapes included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bnnbench.functional as BF

SHAPES = [(1,), (7,), (3, 5), (3, 5, 7), (2, 3, 5, 5)]
WEIGHT_SHAPES = [(1,), (4, 6), (3, 5, 7), (2, 3, 5, 5)]


def _rand(shape, seed=0, scale=1.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * scale).requires_grad_(True)


def _grad(fn, x, seed=1):
    """Gradient of <fn(x), G> for a random G; returns (G, dL/dx)."""
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (gx,) = torch.autograd.grad(out, x, g)
    return g, gx


def _sign(x):
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


# ---------------------------------------------------------------------------- sign_ste
@pytest.mark.parametrize("shape", SHAPES)
def test_sign_ste_values_and_grad(shape):
    x = _rand(shape)
    y = BF.sign_ste(x)
    torch.testing.assert_close(y, _sign(x.detach()))
    g, gx = _grad(BF.sign_ste, x)
    torch.testing.assert_close(gx, g * (x.detach().abs() <= 1))


def test_sign_of_zero_is_plus_one_and_window_inclusive():
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0001, -1.0001], requires_grad=True)
    y = BF.sign_ste(x)
    assert y.tolist() == [1.0, 1.0, 1.0, -1.0, 1.0, -1.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------- stochastic_sign
@pytest.mark.parametrize("p_value", [-0.6, 0.0, 0.3, 0.9])
def test_stochastic_sign_frequency(p_value):
    n = 200_000
    x = torch.full((n,), p_value)
    y = BF.stochastic_sign(x, generator=torch.Generator().manual_seed(3))
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    p = (p_value + 1) / 2
    freq = (y == 1).double().mean().item()
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_stochastic_sign_saturates_reproducible_and_grad():
    x = torch.tensor([-3.0, -1.0, 1.0, 2.5] * 100)
    y = BF.stochastic_sign(x)
    assert (y[x <= -1] == -1).all() and (y[x >= 1] == 1).all()
    z = _rand((3, 5, 7))
    a = BF.stochastic_sign(z, torch.Generator().manual_seed(11))
    b = BF.stochastic_sign(z, torch.Generator().manual_seed(11))
    torch.testing.assert_close(a, b)
    g, gz = _grad(lambda t: BF.stochastic_sign(t, torch.Generator().manual_seed(0)), z)
    torch.testing.assert_close(gz, g * (z.detach().abs() <= 1))


# ---------------------------------------------------------------------------- xnor
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_xnor_weight_values(shape):
    w = _rand(shape, scale=0.5)
    y = BF.xnor_weight(w)
    wd = w.detach()
    if wd.dim() == 1:
        alpha = wd.abs()
    else:
        alpha = wd.abs().reshape(wd.shape[0], -1).mean(1).reshape((-1,) + (1,) * (wd.dim() - 1))
    torch.testing.assert_close(y, alpha * _sign(wd))
    # one scale per output unit: |y| is constant over each unit
    flat = y.detach().abs().reshape(shape[0], -1)
    torch.testing.assert_close(flat.amax(1), flat.amin(1))


@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_xnor_weight_grad_closed_form(shape):
    w = _rand(shape, seed=4, scale=0.8)  # some |w| > 1 so the STE window matters
    g, gw = _grad(BF.xnor_weight, w)
    wd = w.detach()
    dims = tuple(range(1, wd.dim()))
    n = wd[0].numel() if dims else 1
    s = _sign(wd)
    alpha = wd.abs().mean(dims, keepdim=True) if dims else wd.abs()
    gs = (g * s).sum(dims, keepdim=True) if dims else g * s
    expected = alpha * g * (wd.abs() <= 1) + s * gs / n
    torch.testing.assert_close(gw, expected)
    # ... which is autograd of alpha(w) * sign_ste(w)
    if dims:
        _, gw2 = _grad(lambda t: t.abs().mean(dims, keepdim=True) * BF.sign_ste(t), w)
        torch.testing.assert_close(gw, gw2)


@pytest.mark.parametrize(
    "shape,k,stride,padding",
    [((2, 3, 5, 5), 3, 1, 0), ((1, 4, 7, 6), 3, 2, 1), ((3, 1, 4, 4), (2, 3), 1, (1, 0))],
)
def test_xnor_activation_scale(shape, k, stride, padding):
    x = _rand(shape)
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    K = BF.xnor_activation_scale(x, k, stride, padding)
    a = np.pad(x.detach().abs().mean(1).numpy(), ((0, 0), (ph, ph), (pw, pw)))
    ho = (shape[2] + 2 * ph - kh) // sh + 1
    wo = (shape[3] + 2 * pw - kw) // sw + 1
    ref = np.zeros((shape[0], 1, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = a[:, i * sh : i * sh + kh, j * sw : j * sw + kw]
            ref[:, 0, i, j] = win.sum((1, 2)) / (kh * kw)
    assert K.shape == (shape[0], 1, ho, wo)
    np.testing.assert_allclose(K.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: BF.xnor_activation_scale(t, k, stride, padding), x)


# ---------------------------------------------------------------------------- dorefa
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_dorefa_quantize(bits, shape):
    x = _rand(shape).detach().sigmoid().requires_grad_(True)
    n = 2**bits - 1
    y = BF.dorefa_quantize(x, bits)
    torch.testing.assert_close(y, torch.round(x.detach() * n) / n)
    k = (y.detach() * n).numpy()
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert (y.detach() - x.detach()).abs().max() <= 0.5 / n + 1e-12
    g, gx = _grad(lambda t: BF.dorefa_quantize(t, bits), x)
    torch.testing.assert_close(gx, g)


def test_dorefa_full_precision_is_identity():
    x = _rand((3, 5))
    assert BF.dorefa_quantize(x, 32) is x
    assert BF.dorefa_weight(x, 32) is x
    assert BF.dorefa_gradient(x, 32) is x


@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_dorefa_weight_one_bit(shape):
    w = _rand(shape, scale=0.7)
    y = BF.dorefa_weight(w, 1)
    torch.testing.assert_close(y, _sign(w.detach()) * w.detach().abs().mean())
    g, gw = _grad(lambda t: BF.dorefa_weight(t, 1), w)
    torch.testing.assert_close(gw, g)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_dorefa_weight_k_bits(bits, shape):
    w = _rand(shape, scale=0.7)
    n = 2**bits - 1
    y = BF.dorefa_weight(w, bits)

    def closed(t, hard=True):
        u = torch.tanh(t)
        u = u / (2 * u.abs().max()) + 0.5
        q = torch.round(u * n) / n
        q = q if hard else u + (q - u).detach()  # straight-through round
        return 2 * q - 1

    torch.testing.assert_close(y, closed(w.detach()))
    assert y.detach().abs().max() <= 1 + 1e-12
    levels = ((y.detach() + 1) / 2 * n).numpy()
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-9)
    g, gw = _grad(lambda t: BF.dorefa_weight(t, bits), w)
    _, gw2 = _grad(lambda t: closed(t, hard=False), w)
    torch.testing.assert_close(gw, gw2)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_dorefa_activation(bits, shape):
    x = _rand(shape, scale=1.0)
    n = 2**bits - 1
    y = BF.dorefa_activation(x, bits)
    torch.testing.assert_close(y, torch.round(x.detach().clamp(0, 1) * n) / n)
    g, gx = _grad(lambda t: BF.dorefa_activation(t, bits), x)
    xd = x.detach()
    torch.testing.assert_close(gx, g * ((xd >= 0) & (xd <= 1)))


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
@pytest.mark.parametrize("shape", [(1,), (4, 5), (3, 5, 7), (2, 3, 5, 5)])
def test_dorefa_gradient_bounded_on_grid(bits, shape):
    x = _rand(shape)
    gen = torch.Generator().manual_seed(5)
    y = BF.dorefa_gradient(x, bits, generator=gen)
    torch.testing.assert_close(y, x.detach())  # forward identity
    g, gx = _grad(lambda t: BF.dorefa_gradient(t, bits, torch.Generator().manual_seed(5)), x)
    n = 2**bits - 1
    dims = tuple(range(1, len(shape)))
    m = g.abs().amax(dims, keepdim=True) if dims else g.abs()
    assert ((gx - g).abs() <= 2 * m / n + 1e-9).all()
    levels = (gx / (2 * m) + 0.5) * n  # on the grid 2m (k/n - 1/2), k integer in [0, n]
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-9)
    assert levels.min() >= -1e-9 and levels.max() <= n + 1e-9
    _, gx_again = _grad(lambda t: BF.dorefa_gradient(t, bits, torch.Generator().manual_seed(5)), x)
    torch.testing.assert_close(gx, gx_again)


def test_dorefa_gradient_unbiased_and_per_sample():
    x = torch.zeros(2, 1000, requires_grad=True)
    g = torch.linspace(-0.9, 0.9, 2000, dtype=torch.float32).reshape(2, 1000)
    g[1] *= 1e-3  # per-sample max: the small row is quantized on its own scale
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros_like(g)
    reps = 400
    for _ in range(reps):
        (gx,) = torch.autograd.grad(BF.dorefa_gradient(x, 2, gen), x, g)
        acc += gx
    mean = acc / reps
    m = g.abs().amax(1, keepdim=True)
    # interior entries: E[q] = g (stochastic rounding); std of the mean <= 2m/n/2/sqrt(reps)
    tol = 5 * (2 * m / 3) / 2 / math.sqrt(reps)
    assert ((mean - g).abs() <= tol).all()
    assert (gx[1].abs() <= 1e-3 + 1e-9).all() and (gx[1] != 0).any()


def test_dorefa_gradient_zero_rows():
    x = torch.zeros(3, 4, requires_grad=True)
    g = torch.zeros(3, 4)
    g[0, 1] = 2.0
    (gx,) = torch.autograd.grad(BF.dorefa_gradient(x, 3), x, g)
    assert torch.isfinite(gx).all() and (gx[1:] == 0).all()


# ---------------------------------------------------------------------------- ABC-Net
@pytest.mark.parametrize("num_bases", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES[1:] + [(5,)])
def test_abc_weight_bases_lstsq(num_bases, shape):
    w = _rand(shape, seed=7, scale=0.3, dtype=torch.float32).detach()
    bases, alphas = BF.abc_weight_bases(w, num_bases)
    assert bases.shape == (num_bases, *shape) and alphas.shape == (num_bases,)
    wn = w.double().numpy()
    mean, std = wn.mean(), wn.std()
    us = [0.0] if num_bases == 1 else [-1 + i * 2 / (num_bases - 1) for i in range(num_bases)]
    for i, u in enumerate(us):
        np.testing.assert_array_equal(bases[i].numpy(), np.where(wn - mean + u * std >= 0, 1, -1))
    B = bases.reshape(num_bases, -1).T.double().numpy()
    ref = np.linalg.lstsq(B, wn.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(alphas.double().numpy(), ref, rtol=1e-4, atol=1e-6)


def test_abc_weight_bases_rank_deficient_and_error_decreases():
    w = torch.full((4, 3), 0.25)
    bases, alphas = BF.abc_weight_bases(w, 3)  # std = 0: three identical bases
    assert torch.isfinite(alphas).all()
    torch.testing.assert_close(torch.tensordot(alphas, bases, dims=1), w)
    w = torch.randn(64, 27, generator=torch.Generator().manual_seed(0))
    errs = []
    for m in (1, 3, 5):
        b, a = BF.abc_weight_bases(w, m)
        errs.append((torch.tensordot(a, b, dims=1) - w).norm().item())
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("num_bases", [1, 3])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_abc_weight_forward_and_straight_through(num_bases, shape):
    w = _rand(shape, seed=2, scale=0.3)
    y = BF.abc_weight(w, num_bases)
    b, a = BF.abc_weight_bases(w, num_bases)
    torch.testing.assert_close(y, torch.tensordot(a, b, dims=1))
    g, gw = _grad(lambda t: BF.abc_weight(t, num_bases), w)
    torch.testing.assert_close(gw, g)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_act", [1, 3])
def test_abc_activation_values_and_grads(shape, n_act):
    x = _rand(shape, seed=9, scale=1.0)
    gen = torch.Generator().manual_seed(1)
    shifts = (torch.rand(n_act, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(True)
    betas = (torch.rand(n_act, generator=gen, dtype=torch.float64) + 0.1).requires_grad_(True)
    y = BF.abc_activation(x, shifts, betas)
    xd = x.detach()
    ref = sum(
        betas[i].detach() * (2 * ((xd + shifts[i].detach()).clamp(0, 1) >= 0.5).double() - 1)
        for i in range(n_act)
    )
    torch.testing.assert_close(y, ref)
    g = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    gx, gv, gb = torch.autograd.grad(y, (x, shifts, betas), g)

    # closed form of the documented STE
    ex = torch.zeros_like(xd)
    ev, eb = torch.zeros(n_act, dtype=xd.dtype), torch.zeros(n_act, dtype=xd.dtype)
    for i in range(n_act):
        z = xd + shifts[i].detach()
        inside = ((z >= 0) & (z <= 1)).to(xd.dtype)
        ex += betas[i].detach() * inside * g
        ev[i] = (g * betas[i].detach() * inside).sum()
        eb[i] = (g * _sign(z - 0.5)).sum()
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gv, ev)
    torch.testing.assert_close(gb, eb)

    # ... equal to autograd of the surrogate H + (h_v - h_v.detach())
    def surrogate(t, v, b):
        out = 0
        for i in range(n_act):
            h = (t + v[i]).clamp(0, 1)
            out = out + b[i] * (_sign(h.detach() - 0.5) + h - h.detach())
        return out

    s = surrogate(x, shifts, betas)
    torch.testing.assert_close(s, y)
    sx, sv, sb = torch.autograd.grad(s, (x, shifts, betas), g)
    for a, b in ((gx, sx), (gv, sv), (gb, sb)):
        torch.testing.assert_close(a, b)


def test_abc_activation_threshold_at_half():
    x = torch.tensor([0.49, 0.5, 0.51, -2.0, 2.0])
    y = BF.abc_activation(x, torch.zeros(1), torch.ones(1))
    assert y.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]


# ---------------------------------------------------------------------------- Tang
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_residual_binarize(shape, per_sample):
    x = _rand(shape, seed=3, scale=0.8)
    xd = x.detach()
    dims = tuple(range(1, xd.dim())) if per_sample else tuple(range(xd.dim()))
    prev_err = (xd**2).sum(dims) if dims else xd**2
    for m in (1, 2, 3, 4):
        approx, alphas = BF.residual_binarize(x, m, per_sample=per_sample)
        assert not alphas.requires_grad
        assert alphas.shape == ((m, shape[0]) if per_sample else (m,))
        # closed-form re-derivation
        e = xd.clone()
        ref = torch.zeros_like(xd)
        for i in range(m):
            a = e.abs().mean(dims, keepdim=True) if (dims and per_sample) else (
                e.abs() if per_sample else e.abs().mean()
            )
            torch.testing.assert_close(alphas[i], a.reshape(-1) if per_sample else a)
            ref = ref + a * _sign(e)
            e = xd - ref
        torch.testing.assert_close(approx, ref)
        err = ((xd - approx) ** 2).sum(dims) if dims else (xd - approx) ** 2
        count = xd[0].numel() if per_sample else xd.numel()
        # each step removes exactly count * alpha_m^2 of squared error
        torch.testing.assert_close(prev_err - err, count * alphas[-1] ** 2)
        assert (err <= prev_err + 1e-12).all()
        prev_err = err
    g, gx = _grad(lambda t: BF.residual_binarize(t, 2, per_sample)[0], x)
    torch.testing.assert_close(gx, g * (xd.abs() <= 1))


@pytest.mark.parametrize("per_sample", [False, True])
def test_residual_planes_are_the_signs_of_the_residuals(per_sample):
    """The planes a packed path feeds to the XNOR kernels: H_i in {-1, +1}, sign(0) = +1, and
    sum_i alpha_i H_i is residual_binarize's approximation."""
    x = _rand((5, 3, 4), seed=4).detach()
    x[0, 0, 0] = 0.0
    approx, planes, alphas = BF.residual_planes(x, 3, per_sample)
    assert len(planes) == 3 and all(set(h.unique().tolist()) <= {-1.0, 1.0} for h in planes)
    assert planes[0][0, 0, 0] == 1.0
    shape = (-1, 1, 1) if per_sample else ()
    rebuilt = sum(a.reshape(shape) * h for a, h in zip(alphas, planes))
    torch.testing.assert_close(rebuilt, approx)
    ref, ref_alphas = BF.residual_binarize(x, 3, per_sample=per_sample)
    assert torch.equal(approx, ref) and torch.equal(alphas, ref_alphas)


def test_residual_binarize_one_bit_is_scaled_sign():
    x = _rand((4, 3, 2))
    approx, alphas = BF.residual_binarize(x, 1)
    torch.testing.assert_close(approx, x.detach().abs().mean() * _sign(x.detach()))
    torch.testing.assert_close(alphas, x.detach().abs().mean().reshape(1))


def test_bipolar_regularizer():
    ws = [_rand((3, 5, 7), seed=1, scale=0.5), _rand((1,), seed=2), _rand((2, 3, 5, 5), seed=3)]
    r = BF.bipolar_regularizer(ws)
    ref = sum((1 - w.detach() ** 2).sum() for w in ws)
    torch.testing.assert_close(r, ref)
    grads = torch.autograd.grad(r, ws)
    for w, gw in zip(ws, grads):
        torch.testing.assert_close(gw, -2 * w.detach())
    assert BF.bipolar_regularizer([]).item() == 0.0
    assert BF.bipolar_regularizer(iter([torch.ones(3)])).item() == 0.0


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call",
    [
        lambda x: BF.dorefa_quantize(x, 0),
        lambda x: BF.dorefa_weight(x, -1),
        lambda x: BF.dorefa_activation(x, 1.5),
        lambda x: BF.dorefa_gradient(x, 0),
        lambda x: BF.abc_weight_bases(x, 0),
        lambda x: BF.abc_weight(x, 0),
        lambda x: BF.residual_binarize(x, 0),
        lambda x: BF.residual_binarize(x, True),
        lambda x: BF.xnor_activation_scale(x, 0),
        lambda x: BF.xnor_activation_scale(x.reshape(-1), 3),
        lambda x: BF.abc_activation(x, torch.zeros(2), torch.ones(3)),
        lambda x: BF.abc_activation(x, torch.zeros(0), torch.ones(0)),
    ],
)
def test_bad_arguments_raise_one_line_value_error(call):
    with pytest.raises(ValueError) as info:
        call(torch.randn(2, 3, 4, 4))
    assert "\n" not in str(info.value) and str(info.value)
