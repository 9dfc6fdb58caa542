"""Every tiling the GPU autotuner may pick computes the same exact result.

The interpreter runs one small config per kernel through the autotuned entry points; the GPU
tilings (row blocks of 1/4/16, long K steps, pipelined loops, 128x256 int8 tiles) would stay
untested on a CPU machine. Here each kept config of each kernel is launched directly, on odd
shapes (K not a multiple of the K step, N not a multiple of the row block), and compared with
the float64 reference; on a CUDA machine the same tests run on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from bnnbench.kernels import reference as R

from ._util import fp_bound, rand_signs_source, sign, tdev

T = pytest.importorskip("bnnbench.kernels.triton_kernels")


def _label(cfg) -> str:
    kw = cfg.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_KW']}w{cfg.num_warps}s{cfg.num_stages}"


def _launch_xnor(cfg, ap, wp, k, use_dot: bool):
    m, kw = ap.shape
    n = wp.shape[0]
    c = torch.empty((m, n), dtype=torch.int32, device=ap.device)
    grid = T._gemm_grid(m, n)({**cfg.kwargs})
    T._xnor_gemm_kernel[grid](ap, wp, c, m, n, kw, k, ap.stride(0), ap.stride(1), wp.stride(0),
                              wp.stride(1), c.stride(0), c.stride(1), USE_DOT=use_dot,
                              HW_POPC=T._hw_popc(ap.device), num_warps=cfg.num_warps,
                              num_stages=cfg.num_stages, **cfg.kwargs)
    return c


@pytest.mark.parametrize("cfg", T._popcount_configs(), ids=_label)
def test_every_popcount_config_is_exact(cfg):
    bm = cfg.kwargs["BLOCK_M"]
    m, n = max(1, bm - 1) if bm > 1 else 1, 2 * cfg.kwargs["BLOCK_N"] + 3
    k = 32 * cfg.kwargs["BLOCK_KW"] + 77  # two K steps, the second one partial, a partial word
    a, w = rand_signs_source((m, k), seed=1), rand_signs_source((n, k), seed=2)
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    got = _launch_xnor(cfg, *tdev(ap, wp), k, use_dot=False).cpu()
    assert torch.equal(got.double(), sign(a) @ sign(w).T)


@pytest.mark.parametrize("cfg", T._dot_configs(), ids=_label)
def test_every_int8_dot_config_is_exact(cfg):
    m, n = cfg.kwargs["BLOCK_M"] + 5, cfg.kwargs["BLOCK_N"] + 3
    k = 32 * cfg.kwargs["BLOCK_KW"] + 45
    a, w = rand_signs_source((m, k), seed=3), rand_signs_source((n, k), seed=4)
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    got = _launch_xnor(cfg, *tdev(ap, wp), k, use_dot=True).cpu()
    assert torch.equal(got.double(), sign(a) @ sign(w).T)


@pytest.mark.parametrize("cfg", T._bw_configs_for(torch.float16), ids=_label)
def test_every_binary_weight_config_fp16(cfg):
    """fp16 activations: the +-1 weights are built from bits (sign bit + 1.0's exponent)."""
    m, n = cfg.kwargs["BLOCK_M"] - 3, cfg.kwargs["BLOCK_N"] + 5
    k = 32 * cfg.kwargs["BLOCK_KW"] + 13
    x = rand_signs_source((m, k), seed=5).to(torch.float16)
    w = rand_signs_source((n, k), seed=6)
    wp = R.pack_signs_ref(w)
    scale = torch.rand(n) + 0.5
    xd, wpd, sd = tdev(x, wp, scale)
    y = torch.empty((m, n), dtype=torch.float16, device=xd.device)
    grid = T._gemm_grid(m, n)(cfg.kwargs)
    T._binary_weight_gemm_kernel[grid](
        xd, wpd, sd, y, y, m, n, k, wp.shape[1], xd.stride(0), xd.stride(1), wpd.stride(0),
        wpd.stride(1), y.stride(0), y.stride(1), HAS_SCALE=True, HAS_BIAS=False, FP32_MODE=0,
        ONE_BITS=0x3C00, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs)
    ref = (x.double() @ sign(w).T) * scale.double()
    err = (y.cpu().double() - ref).abs()
    assert (err <= fp_bound(x, ref, scale, torch.float16)).all(), err.max()


@pytest.mark.parametrize("m,n,k", [(17, 8, 33), (40, 24, 1000), (33, 64, 64)])
def test_xnor_gemm_int_mm_path_is_exact(m, n, k):
    """Unpack to +-1 int8 + cuBLASLt-style int8 matmul (torch._int_mm), pad bits corrected."""
    if not hasattr(torch, "_int_mm"):
        pytest.skip("torch._int_mm missing")
    a, w = rand_signs_source((m, k), seed=7), rand_signs_source((n, k), seed=8)
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    try:
        got = T.xnor_gemm(*tdev(ap, wp), k, path="int_mm").cpu()
    except RuntimeError as e:  # some CPU builds lack an int8 matmul kernel
        pytest.skip(f"torch._int_mm unavailable here: {e}")
    assert got.dtype == torch.int32
    assert torch.equal(got.double(), sign(a) @ sign(w).T)


def test_int_mm_path_refuses_shapes_cublaslt_cannot_take():
    from bnnbench.kernels import KernelInputError

    ap, wp = R.pack_signs_ref(torch.randn(8, 64)), R.pack_signs_ref(torch.randn(8, 64))
    with pytest.raises(KernelInputError, match="M > 16"):
        T.xnor_gemm(*tdev(ap, wp), 64, path="int_mm")
