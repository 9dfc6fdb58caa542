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


def _label_split(cfg) -> str:
    return _label(cfg) + f"k{cfg.kwargs.get('SPLIT_K', 1)}"


def _launch_xnor(cfg, ap, wp, k, use_dot: bool):
    m, kw = ap.shape
    n = wp.shape[0]
    # garbage in c unless the config's own pre_hook zeroes it (split-K adds into c)
    c = torch.full((m, n), 12345, dtype=torch.int32, device=ap.device)
    kwargs = {"SPLIT_K": 1, **cfg.kwargs}
    if cfg.pre_hook is not None:
        cfg.pre_hook({"c_ptr": c})
    grid = (T._gemm_grid(m, n)(kwargs)[0], kwargs["SPLIT_K"])
    T._xnor_gemm_kernel[grid](ap, wp, c, m, n, kw, k, ap.stride(0), ap.stride(1), wp.stride(0),
                              wp.stride(1), c.stride(0), c.stride(1), c, c, USE_DOT=use_dot,
                              HW_POPC=T._hw_popc(ap.device), num_warps=cfg.num_warps,
                              num_stages=cfg.num_stages, **kwargs)
    return c


@pytest.mark.parametrize("cfg", T._xnor_gemv_configs(), ids=_label_split)
def test_every_popcount_config_is_exact(cfg):
    """Every GEMV tile, split-K ones included: with SPLIT_K splits of whole K steps the last
    split is partial or empty and the last word partial (K = 32 * BKW * (SPLIT_K - 1) + 77)."""
    bm, split = cfg.kwargs["BLOCK_M"], cfg.kwargs["SPLIT_K"]
    m, n = max(1, bm - 1) if bm > 1 else 1, 2 * cfg.kwargs["BLOCK_N"] + 3
    k = 32 * cfg.kwargs["BLOCK_KW"] * max(1, split - 1) + 77
    a, w = rand_signs_source((m, k), seed=1), rand_signs_source((n, k), seed=2)
    ap, wp = R.pack_signs_ref(a), R.pack_signs_ref(w)
    got = _launch_xnor(cfg, *tdev(ap, wp), k, use_dot=False).cpu()
    assert torch.equal(got.double(), sign(a) @ sign(w).T)


@pytest.mark.parametrize("m,n,kw,split", [
    (1, 1024, 128, True), (4, 512, 256, True), (1, 1024, 512, True), (1, 256, 256, True),
    (1, 256, 64, False),  # K = 2048: too short to give every split a whole K step
    (1, 4096, 128, False), (1, 8192, 256, False), (1, 2048, 256, False),
    (16, 256, 512, False),  # no split-K tile with 16-row blocks: the unsplit ones stay
])
def test_small_n_gemv_prunes_to_split_k(m, n, kw, split, monkeypatch):
    """When every unsplit tiling leaves SMs idle (fewer output tiles than 132 SMs), only split-K
    configs survive the pruning, each running more programs than any unsplit tiling (all 132
    SMs where a split tiling can) and giving every split a whole K step; otherwise none is
    split."""
    monkeypatch.setattr(T, "INTERPRET", False)
    monkeypatch.setattr(T, "_current_smem", lambda: 228 * 1024)
    monkeypatch.setattr(T, "_current_sms", lambda: 132)
    kept = T._prune_xnor_gemv(T._xnor_gemv_configs(), {"M": m, "N": n, "KW": kw})
    assert kept
    def tiles(c):
        return -(-m // c.kwargs["BLOCK_M"]) * -(-n // c.kwargs["BLOCK_N"])

    same_rows = [c for c in T._xnor_gemv_configs()
                 if c.kwargs["BLOCK_M"] == kept[0].kwargs["BLOCK_M"]]
    unsplit = max(tiles(c) for c in same_rows if c.kwargs["SPLIT_K"] == 1)
    if split:
        for c in kept:
            assert c.kwargs["SPLIT_K"] > 1 and tiles(c) * c.kwargs["SPLIT_K"] > unsplit
            assert tiles(c) * c.kwargs["SPLIT_K"] >= 132 or n * m <= 256
            assert c.kwargs["SPLIT_K"] * c.kwargs["BLOCK_KW"] <= kw
            assert c.pre_hook is not None  # zeroes the output it adds into
    else:
        assert all(c.kwargs["SPLIT_K"] == 1 for c in kept)


def test_split_k_output_is_zeroed_on_every_launch():
    """The split-K configs zero c themselves (config pre_hook) before each launch: two
    launches into the same output give the same exact result, not twice it."""
    cfg = next(c for c in T._xnor_gemv_configs() if c.kwargs["SPLIT_K"] > 1)
    k = 32 * cfg.kwargs["BLOCK_KW"] * cfg.kwargs["SPLIT_K"]
    a, w = rand_signs_source((1, k), seed=11), rand_signs_source((5, k), seed=12)
    ap, wp = tdev(R.pack_signs_ref(a), R.pack_signs_ref(w))
    c = torch.empty((1, 5), dtype=torch.int32, device=ap.device)
    grid = (T._gemm_grid(1, 5)(cfg.kwargs)[0], cfg.kwargs["SPLIT_K"])
    for _ in range(2):
        cfg.pre_hook({"c_ptr": c})
        T._xnor_gemm_kernel[grid](ap, wp, c, 1, 5, wp.shape[1], k, ap.stride(0), ap.stride(1),
                                  wp.stride(0), wp.stride(1), c.stride(0), c.stride(1), c, c,
                                  USE_DOT=False, HW_POPC=T._hw_popc(ap.device),
                                  num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                  **cfg.kwargs)
    assert torch.equal(c.cpu().double(), sign(a) @ sign(w).T)


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


GEMV_CONFIGS = ([(T._binary_weight_gemv_kernel, c) for c in T._bw_gemv_configs()]
                + [(T._binary_weight_gemv_words_kernel, c) for c in T._bw_gemv_word_configs()])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kernel,cfg", GEMV_CONFIGS, ids=[
    ("words" if k is T._binary_weight_gemv_words_kernel else "lanes") + _label(c)
    for k, c in GEMV_CONFIGS])
def test_every_binary_weight_gemv_config(kernel, cfg, dtype):
    """The sign-flip GEMV (M <= 4), both layouts (a word's bits across lanes, whole words per
    thread): every tile on M = 1..BLOCK_M rows, N not a multiple of BLOCK_N, two K steps plus
    a partial word; bf16 too (no tl.dot here, so the interpreter computes it right)."""
    bm = cfg.kwargs["BLOCK_M"]
    m, n = (1 if bm == 1 else bm - 1), cfg.kwargs["BLOCK_N"] + 5
    k = 32 * cfg.kwargs["BLOCK_KW"] + 45
    x = rand_signs_source((m, k), seed=9).to(dtype)
    w = rand_signs_source((n, k), seed=10)
    wp = R.pack_signs_ref(w)
    scale, bias = torch.rand(n) + 0.5, torch.randn(n)
    xd, wpd, sd, bd = tdev(x, wp, scale, bias)
    y = torch.empty((m, n), dtype=dtype, device=xd.device)
    grid = T._gemm_grid(m, n)(cfg.kwargs)
    kernel[grid](
        xd, wpd, sd, bd, y, m, n, k, wp.shape[1], xd.stride(0), xd.stride(1), wpd.stride(0),
        wpd.stride(1), y.stride(0), y.stride(1), HAS_SCALE=True, HAS_BIAS=True,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs)
    ref = (x.double() @ sign(w).T) * scale.double() + bias.double()
    err = (y.cpu().double() - ref).abs()
    assert (err <= fp_bound(x, ref, scale, dtype) + 4 * torch.finfo(dtype).eps * bias.abs().double()
            ).all(), err.max()


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
