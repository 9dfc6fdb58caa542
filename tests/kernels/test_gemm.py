"""xnor_gemm, binary_weight_gemm and multibit_xnor_gemm on odd shapes, every backend and path."""

from __future__ import annotations

import pytest
import torch

import bnnbench.kernels as K
import bnnbench.kernels.cpu as C
from bnnbench.kernels import reference as R

from ._util import fp_bound, rand_signs_source, sign, tdev

# (M, N, K): M = 1, N = 1, K not a multiple of 32 (odd word counts too), large K.
GEMM_SHAPES = [(1, 1, 1), (1, 37, 1031), (3, 1, 33), (5, 19, 64), (2, 40, 95), (33, 17, 200)]


def _operands(m, n, k, seed=0):
    a = rand_signs_source((m, k), seed=seed)
    w = rand_signs_source((n, k), seed=seed + 1)
    return a, w


@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_reference_is_signed_matmul(m, n, k):
    a, w = _operands(m, n, k)
    got = R.xnor_gemm_ref(R.pack_signs_ref(a), R.pack_signs_ref(w), k)
    assert torch.equal(got.double(), sign(a) @ sign(w).T)


@pytest.fixture(params=["popcount", "int8"])
def cpu_path(request, monkeypatch):
    """Force one of the two CPU strategies regardless of M."""
    popcount = request.param == "popcount"
    monkeypatch.setattr(C, "POPCOUNT_MIN_M", 1 << 30 if popcount else 0)
    monkeypatch.setattr(C, "POPCOUNT_ROWS_PER_M", 1 if popcount else 1 << 30)
    return request.param


@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_xnor_gemm_cpu(m, n, k, cpu_path):
    a, w = _operands(m, n, k)
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    got = K.xnor_gemm(ap, wp, k, backend="cpu")
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got, R.xnor_gemm_ref(ap, wp, k))


@pytest.mark.parametrize("path", ["popcount", "dot"])
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_xnor_gemm_triton_paths(m, n, k, path):
    from bnnbench.kernels import triton_kernels as T

    a, w = _operands(m, n, k)
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    got = T.xnor_gemm(*tdev(ap, wp), k, path=path).cpu()
    assert got.dtype == torch.int32
    assert torch.equal(got, R.xnor_gemm_ref(ap, wp, k))


@pytest.mark.parametrize("m", [1, 33])  # auto: popcount below DOT_MIN_M rows, int8 dot above
def test_xnor_gemm_public_triton(m):
    a, w = _operands(m, 9, 70)
    ap, wp = K.pack_signs(tdev(a), backend="triton"), K.pack_signs(tdev(w), backend="triton")
    got = K.xnor_gemm(ap, wp, 70, backend="triton").cpu()
    assert torch.equal(got, R.xnor_gemm_ref(ap.cpu(), wp.cpu(), 70))


def test_xnor_gemm_leading_dims():
    a, w = _operands(6, 5, 40)
    ap, wp = K.pack_signs(a).view(2, 3, -1), K.pack_signs(w)
    got = K.xnor_gemm(ap, wp, 40)
    assert got.shape == (2, 3, 5)
    assert torch.equal(got.view(6, 5).double(), sign(a) @ sign(w).T)


# ---------------------------------------------------------------------------------------------
BW_SHAPES = [(1, 1, 1), (1, 37, 1031), (3, 1, 33), (17, 19, 95), (2, 40, 64)]


def _bw_check(y, x, wp, scale, bias):
    ref = R.binary_weight_gemm_ref(x.double(), wp, scale, bias)  # float64 ground truth
    assert y.dtype == x.dtype
    err = (y.double() - ref).abs()
    bound = fp_bound(x, ref, scale, x.dtype)
    assert bool((err <= bound).all()), f"max err {err.max().item()} vs bound {bound.min().item()}"


@pytest.mark.parametrize("with_scale,with_bias", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["jit_lut", "torch_lut", "unpack"])
@pytest.mark.parametrize("m,n,k", BW_SHAPES)
def test_binary_weight_gemm_cpu(m, n, k, path, dtype, with_scale, with_bias, monkeypatch):
    """Every CPU strategy, forced regardless of M (N = 19, 37, 40: the 8-row blocks' tails)."""
    monkeypatch.setattr(C, "BW_JIT_MAX_M", 1 << 30 if path == "jit_lut" else 0)
    monkeypatch.setattr(C, "BW_LUT_MAX_M", 1 << 30 if path == "torch_lut" else 0)
    monkeypatch.setattr(C, "LUT_ROW_CHUNK", 8)  # several table passes for the 17-row case
    x = rand_signs_source((m, k)).to(dtype)
    wp = R.pack_signs_ref(rand_signs_source((n, k), seed=3))
    scale = torch.rand(n) + 0.5 if with_scale else None
    bias = torch.randn(n) if with_bias else None
    _bw_check(K.binary_weight_gemm(x, wp, scale, bias, backend="cpu"), x, wp, scale, bias)


# bf16 tl.dot is wrong in the interpreter: fp32 and fp16 here, bf16 on CUDA / in the CPU tests
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,n,k", BW_SHAPES)
def test_binary_weight_gemm_triton(m, n, k, dtype):
    x = rand_signs_source((m, k)).to(dtype)
    wp = R.pack_signs_ref(rand_signs_source((n, k), seed=3))
    scale, bias = torch.rand(n) + 0.5, torch.randn(n)
    y = K.binary_weight_gemm(*tdev(x, wp, scale, bias), backend="triton").cpu()
    _bw_check(y, x, wp, scale, bias)


def test_binary_weight_gemm_triton_no_scale():
    x = rand_signs_source((3, 50))
    wp = R.pack_signs_ref(rand_signs_source((7, 50), seed=3))
    _bw_check(K.binary_weight_gemm(*tdev(x, wp), backend="triton").cpu(), x, wp, None, None)


def test_binary_weight_gemm_leading_dims():
    x = rand_signs_source((2, 3, 45))
    wp = K.pack_signs(rand_signs_source((6, 45), seed=2))
    y = K.binary_weight_gemm(x, wp)
    assert y.shape == (2, 3, 6)
    want = x.double() @ sign(rand_signs_source((6, 45), seed=2)).T
    torch.testing.assert_close(y, want.float())


# ---------------------------------------------------------------------------------------------
MB_SHAPES = [(1, 5, 1031, 2), (3, 1, 33, 3), (33, 7, 70, 2)]


def _mb_operands(m, n, k, p, per_row):
    planes, alpha = K.residual_binarize(rand_signs_source((m, k)), p, per_row=per_row)
    wp = R.pack_signs_ref(rand_signs_source((n, k), seed=5))
    return planes, alpha, wp, torch.rand(n) + 0.5, torch.randn(n)


def _mb_check(y, planes, alpha, wp, k, scale, bias):
    ref = R.multibit_xnor_gemm_ref(planes, wp, alpha, k, scale, bias).double()
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)


def test_residual_binarize_reconstructs():
    x = rand_signs_source((4, 100))
    err = []
    for p in (1, 2, 3):
        planes, alpha = K.residual_binarize(x, p)
        h = R.unpack_signs_ref(planes, 100)
        approx = (alpha[:, :, None] * h).sum(0)
        err.append((approx - x).norm().item())
    assert err[0] > err[1] > err[2]


@pytest.fixture(params=["popcount", "int8"])
def multibit_path(request, monkeypatch):
    """Force one of the two CPU strategies of multibit_xnor_gemm regardless of the shape."""
    int8 = request.param == "int8"
    monkeypatch.setattr(C, "MULTIBIT_INT8_MIN_ROWS", 0 if int8 else 1 << 30)
    monkeypatch.setattr(C, "MULTIBIT_INT8_MIN_N", 0 if int8 else 1 << 30)
    return request.param


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("m,n,k,p", MB_SHAPES)
def test_multibit_cpu(m, n, k, p, per_row, multibit_path):
    planes, alpha, wp, scale, bias = _mb_operands(m, n, k, p, per_row)
    y = K.multibit_xnor_gemm(planes, wp, alpha, k, scale, bias, backend="cpu")
    _mb_check(y, planes, alpha, wp, k, scale, bias)


@pytest.mark.parametrize("path", ["popcount", "dot"])
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("m,n,k,p", MB_SHAPES)
def test_multibit_triton_paths(m, n, k, p, per_row, path):
    from bnnbench.kernels import triton_kernels as T

    planes, alpha, wp, scale, bias = _mb_operands(m, n, k, p, per_row)
    al = alpha if per_row else alpha[:, None].expand(p, m)
    pl, w_, al_, sc, bi = tdev(planes, wp, al, scale, bias)
    y = T.multibit_xnor_gemm(pl, w_, al_, k, sc, bi, path=path).cpu()
    _mb_check(y, planes, alpha, wp, k, scale, bias)


@pytest.mark.parametrize("p,m,n,k", [(2, 5, 10, 1031), (2, 40, 300, 64), (3, 3, 133, 77),
                                     (3, 3, 134, 77), (1, 17, 401, 33)])
def test_multibit_cpu_rounds_as_einsum(p, m, n, k, multibit_path):
    """The CPU plane sum is ``sum_p alpha_pm dot_pmn`` in float32, then ``* scale`` and
    ``+ bias``: within float32's rounding bound of the exact (float64) sum, ``(P + 2) eps
    (sum_p |alpha dot| |scale| + |bias|)``. Bit equality with ``torch.einsum`` is not asked:
    einsum's BLAS batch matmul fuses multiply-adds or not depending on the CPU."""
    planes = R.pack_signs_ref(rand_signs_source((p, m, k), seed=7))
    wp = R.pack_signs_ref(rand_signs_source((n, k), seed=8))
    g = torch.Generator().manual_seed(9)
    alpha, scale, bias = torch.rand(p, m, generator=g) * 3, torch.rand(n, generator=g) + 0.5, \
        torch.randn(n, generator=g)
    dots = torch.stack([R.xnor_gemm_ref(planes[i], wp, k) for i in range(p)]).to(torch.float64)
    terms = alpha.double()[:, :, None] * dots
    eps = torch.finfo(torch.float32).eps
    exact, size = terms.sum(0), terms.abs().sum(0)
    got = K.multibit_xnor_gemm(planes, wp, alpha, k, backend="cpu").double()
    assert bool(((got - exact).abs() <= (p + 1) * eps * size).all())
    exact = exact * scale.double() + bias.double()
    size = size * scale.double() + bias.double().abs()
    got = K.multibit_xnor_gemm(planes, wp, alpha, k, scale, bias, backend="cpu").double()
    assert bool(((got - exact).abs() <= (p + 3) * eps * size).all())


@pytest.mark.parametrize("r,k", [(1, 1), (3, 33), (5, 1031), (2, 64)])
def test_cpu_unpack_pm1_int8(r, k):
    """The compiled unpacking gives the signs as int8 +-1, and +1 on the zero padding bits."""
    packed = R.pack_signs_ref(rand_signs_source((r, k), seed=3))
    got = C._unpack_pm1_int8(packed)
    assert got.dtype == torch.int8 and got.shape == (r, packed.shape[1] * 32)
    assert torch.equal(got[:, :k], R.unpack_signs_ref(packed, k, dtype=torch.int8))
    assert bool((got[:, k:] == 1).all())


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("planes", [1, 2, 3])
@pytest.mark.parametrize("shape", [(4, 100), (1, 33), (3, 5, 64), (7, 1031)])
def test_cpu_residual_sign_planes(shape, planes, per_sample):
    """The compiled residual binarization equals bnnbench's (functional.residual_planes, then
    pack_signs) bit for bit: packed planes and alphas, exact zeros and -0.0 included."""
    from bnnbench.functional import residual_planes

    x = rand_signs_source(shape, seed=11) * 3
    _, hs, alphas = residual_planes(x, planes, per_sample)
    got_planes, got_alphas = C.residual_sign_planes(x, planes, per_sample)
    assert torch.equal(got_planes, R.pack_signs_ref(torch.stack([h.reshape(-1, shape[-1])
                                                                 for h in hs])))
    assert got_alphas.shape == alphas.shape and torch.equal(got_alphas, alphas)


def test_multibit_is_sum_of_planes():
    """y = sum_i alpha_i * xnor_gemm(H_i, W), without scale/bias, per-plane scalar alphas."""
    planes, alpha, wp, _, _ = _mb_operands(4, 6, 77, 3, per_row=False)
    want = sum(alpha[i].double() * K.xnor_gemm(planes[i], wp, 77).double() for i in range(3))
    for backend in ("cpu", "triton"):
        args = tdev(planes, wp, alpha) if backend == "triton" else (planes, wp, alpha)
        y = K.multibit_xnor_gemm(*args, 77, backend=backend).cpu()
        torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("group_bits", [8, 4])
@pytest.mark.parametrize("m,n,k", [(1, 7, 1031), (5, 3, 33), (16, 9, 64), (0, 3, 33)])
def test_cpu_lut_group_sizes(m, n, k, group_bits):
    """Both lookup-table widths of the CPU LUT path equal a float64 matmul."""
    x = rand_signs_source((m, k))
    w = rand_signs_source((n, k), seed=4)
    wp = R.pack_signs_ref(w)
    xpad = torch.nn.functional.pad(x, (0, wp.shape[1] * 32 - k))
    got = C.lut_matmul(xpad, wp, group_bits)
    torch.testing.assert_close(got.double(), x.double() @ sign(w).T, rtol=1e-5, atol=1e-4)


def test_xnor_gemm_cpu_huge_k():
    """K >= 2^16: popcounts above 65535 must not wrap."""
    k = 70001
    a, w = _operands(2, 3, k)
    a[0] = -1.0
    w[0] = -1.0  # dot(a[0], w[0]) = k: popcount 0
    w[1] = 1.0   # dot(a[0], w[1]) = -k: popcount k > 65535
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    got = K.xnor_gemm(ap, wp, k, backend="cpu")
    assert got[0, 0] == k and got[0, 1] == -k
    assert torch.equal(got.double(), sign(a) @ sign(w).T)

