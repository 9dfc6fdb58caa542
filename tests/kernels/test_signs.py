"""The fused BatchNorm-threshold + sign + pack epilogue (``xnor_gemm_signs``,
``binary_conv2d_signs``) and packed conv inputs: every backend, path and kept tiling gives the
bits an independent float64 computation gives, on odd shapes (N not a multiple of 32 or of
the channel block, thresholds below, inside and above the reachable dots, both flips)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnnbench.kernels as K
from bnnbench.kernels import KernelInputError
from bnnbench.kernels import reference as R

from ._util import rand_signs_source, sign, tdev

T = pytest.importorskip("bnnbench.kernels.triton_kernels")


def _thresholds(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-k - 2, k + 3, (n,), generator=g, dtype=torch.int32)
    t[:2] = torch.tensor([-k - 1, k + 1], dtype=torch.int32)  # constant channels
    return t, torch.randint(0, 2, (n,), generator=g, dtype=torch.int32)


def _expected_bits(dots: torch.Tensor, t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Independent: bit = (dot < t) xor f as +-1 floats, packed by the reference packer."""
    neg = (dots < t.double()) != f.bool()
    return R.pack_signs_ref(torch.where(neg, -1.0, 1.0))


LINEAR = [(1, 45, 77), (3, 33, 64), (5, 100, 300), (40, 70, 95)]


@pytest.mark.parametrize("m,n,k", LINEAR, ids=[f"m{m}n{n}k{k}" for m, n, k in LINEAR])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_xnor_gemm_signs(m, n, k, backend):
    a, w = rand_signs_source((m, k), seed=m), rand_signs_source((n, k), seed=n)
    t, f = _thresholds(n, k, seed=k)
    dots = sign(a) @ sign(w).T
    ap, wp, td, fd = (K.pack_signs(a), K.pack_signs(w), t, f) if backend != "triton" else tdev(
        R.pack_signs_ref(a), R.pack_signs_ref(w), t, f)
    got = K.xnor_gemm_signs(ap, wp, k, td, fd, backend=backend).cpu()
    assert got.dtype == torch.int32 and got.shape == (m, (n + 31) // 32)
    assert torch.equal(got, _expected_bits(dots, t, f))
    # the packed output is the next layer's input: unpacking gives sign(BN(y)) as +-1
    assert torch.equal(R.unpack_signs_ref(got, n, dtype=torch.float64),
                       torch.where((dots < t.double()) != f.bool(), -1.0, 1.0))


def _label(cfg) -> str:
    kw = cfg.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_KW']}w{cfg.num_warps}s{cfg.num_stages}"


def _launch_signs(cfg, ap, wp, k, t, f, use_dot: bool):
    m, kw = ap.shape
    n = wp.shape[0]
    out = torch.zeros((m, (n + 31) // 32), dtype=torch.int32, device=ap.device)
    kwargs = {**cfg.kwargs, "SPLIT_K": 1}
    grid = (T._gemm_grid(m, n)(kwargs)[0], 1)
    T._xnor_gemm_kernel[grid](ap, wp, out, m, n, kw, k, ap.stride(0), ap.stride(1),
                              wp.stride(0), wp.stride(1), out.stride(0), out.stride(1), t, f,
                              USE_DOT=use_dot, HW_POPC=T._hw_popc(ap.device), SIGNS_OUT=True,
                              num_warps=cfg.num_warps, num_stages=cfg.num_stages, **kwargs)
    return out


SIGNS_CONFIGS = [(c, False) for c in T._popcount_configs()] + [(c, True)
                                                                for c in T._dot_configs()[-2:]]


@pytest.mark.parametrize("cfg,use_dot", SIGNS_CONFIGS,
                         ids=[_label(c) + ("dot" if d else "") for c, d in SIGNS_CONFIGS])
def test_every_signs_gemm_config(cfg, use_dot):
    """Every popcount tile the signs GEMV may pick (channel blocks of 8 to 64: narrower than a
    word, OR-ed atomically, or several words per tile) and the small int8-dot tiles (the large
    ones run the same epilogue), N past the last whole block and word."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    m, n = max(1, bm - 1), max(2 * bn, 32) + 7
    k = 32 * cfg.kwargs["BLOCK_KW"] + 13
    a, w = rand_signs_source((m, k), seed=21), rand_signs_source((n, k), seed=22)
    t, f = _thresholds(n, k, seed=23)
    got = _launch_signs(cfg, *tdev(R.pack_signs_ref(a), R.pack_signs_ref(w)), k, *tdev(t, f),
                        use_dot=use_dot).cpu()
    assert torch.equal(got, _expected_bits(sign(a) @ sign(w).T, t, f))


# (N, C, H, W, OC, KSIZE, stride, padding): odd channels, OC across word boundaries
CONV = [(1, 37, 6, 5, 45, 3, 1, 1), (2, 5, 7, 6, 33, 3, 2, 2), (1, 70, 4, 4, 64, 1, 1, 0)]


def _conv_case(nb, c, h, w, oc, ks, seed=0):
    return rand_signs_source((nb, c, h, w), seed=seed), rand_signs_source((oc, c, ks, ks),
                                                                         seed=seed + 1)


@pytest.mark.parametrize("case", CONV, ids=[str(c) for c in CONV])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton-popcount", "triton-dot"])
def test_conv_signs_and_packed_input(case, backend):
    """Signs out from float or packed input; a packed input gives the float conv's values."""
    nb, c, h, w, oc, ks, s, p = case
    x, wt = _conv_case(nb, c, h, w, oc, ks)
    dots = F.conv2d(sign(x), sign(wt), stride=s, padding=p)        # exact zero padding
    t, f = _thresholds(oc, c * ks * ks, seed=oc)
    want = _expected_bits(dots.permute(0, 2, 3, 1), t, f)
    wp = K.pack_conv_weight(wt)
    xp = R.pack_signs_ref(x.permute(0, 2, 3, 1))                    # NHWC packed signs
    if backend.startswith("triton"):
        path = backend.split("-")[1]
        xd, xpd, wpd, td, fd = tdev(x, xp, wp, t, f)
        outs = [T.binary_conv2d_signs(xd, wpd, td, fd, (s, s), (p, p), path=path),
                T.binary_conv2d_signs(xpd, wpd, td, fd, (s, s), (p, p), 1, c, path=path)]
        y = T.binary_conv2d(xpd, wpd, stride=(s, s), padding=(p, p), in_channels=c, path=path)
    else:
        outs = [K.binary_conv2d_signs(x, wp, t, f, s, p, backend=backend),
                K.binary_conv2d_signs(xp, wp, t, f, s, p, in_channels=c, backend=backend)]
        y = K.binary_conv2d(xp, wp, stride=s, padding=p, in_channels=c, backend=backend)
    for got in outs:
        assert got.shape == want.shape and torch.equal(got.cpu(), want)
    assert y.dtype == torch.float32 and torch.equal(y.cpu().double(), dots)


def _conv_label(cfg) -> str:
    kw = cfg.kwargs
    return f"{kw['BLOCK_P']}x{kw['BLOCK_OC']}x{kw['BLOCK_CW']}w{cfg.num_warps}"


@pytest.mark.parametrize("use_dot", [False, True], ids=["popcount", "dot"])
def test_every_signs_conv_config(use_dot):
    """Every conv tile with the signs epilogue (channel blocks of 32 to 128)."""
    x, wt = _conv_case(1, 37, 5, 5, 2 * 128 + 5, 3, seed=31)
    t, f = _thresholds(wt.shape[0], 37 * 9, seed=32)
    dots = F.conv2d(sign(x), sign(wt), padding=1)
    want = _expected_bits(dots.permute(0, 2, 3, 1), t, f)
    xp, wp, td, fd = tdev(R.pack_signs_ref(x.permute(0, 2, 3, 1)), K.pack_conv_weight(wt), t, f)
    oc = wt.shape[0]
    for cfg in T._conv_configs(use_dot):
        y = torch.zeros((1, 5, 5, (oc + 31) // 32), dtype=torch.int32, device=xp.device)
        xp5 = xp.reshape(1, 5, 5, 1, -1)
        grid = (-(-25 // cfg.kwargs["BLOCK_P"]), -(-oc // cfg.kwargs["BLOCK_OC"]), 1)
        T._binary_conv2d_kernel[grid](
            xp5, wp, y, y, y, 1, 5, 5, 5, 5, xp5.shape[-1], 37, oc, 3, 3, 1, 1, 1, 1,
            *xp5.stride(), *wp.stride(), y.stride(0), y.stride(3), y.stride(1), y.stride(2),
            td, fd, HAS_SCALE=False, HAS_BIAS=False, USE_DOT=use_dot,
            HW_POPC=T._hw_popc(xp.device), SIGNS_OUT=True, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, **cfg.kwargs)
        assert torch.equal(y.cpu(), want), _conv_label(cfg)


def test_bad_thresholds_and_packed_inputs_are_one_line_errors():
    ap, wp = K.pack_signs(torch.randn(2, 40)), K.pack_signs(torch.randn(5, 40))
    t = torch.zeros(5, dtype=torch.int32)
    with pytest.raises(KernelInputError,
                       match=r"threshold must be an int32 tensor of shape \(5,\)"):
        K.xnor_gemm_signs(ap, wp, 40, t.float(), t)
    with pytest.raises(KernelInputError, match="flip must be"):
        K.xnor_gemm_signs(ap, wp, 40, t, t[:4])
    xp = K.pack_signs(torch.randn(1, 4, 4, 40))
    wc = K.pack_conv_weight(torch.randn(5, 40, 3, 3))
    with pytest.raises(KernelInputError, match="needs in_channels=C"):
        K.binary_conv2d(xp, wc)
    with pytest.raises(KernelInputError, match="in_channels=70 needs 3"):
        K.binary_conv2d(xp, wc, in_channels=70)
    with pytest.raises(KernelInputError, match="groups=1"):
        K.binary_conv2d_signs(torch.randn(1, 40, 4, 4), K.pack_conv_weight(
            torch.randn(4, 20, 3, 3)), t[:4], t[:4], groups=2)
