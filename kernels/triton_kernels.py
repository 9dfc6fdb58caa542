"""Triton kernels for bitpacked binary layers, and their launchers (Triton tutorial 03 style).

This module is imported lazily (first ``backend="triton"`` call), because Triton reads
``TRITON_INTERPRET`` when the ``@triton.jit`` decorators below run: on a CPU-only machine set
``TRITON_INTERPRET=1`` before that first call to run these kernels in the (slow) interpreter.

Packing (see :mod:`bnnbench.kernels.reference`): 32 signs per int32 word, LSB first, bit 1 =
-1, zero padded (pad = +1 on both operands).

Two strategies for the +-1 dot products, chosen by the number of activation rows M:

* **popcount** (M <= 16, memory-bound GEMV regime): ``dot = k - 2 * popcount(a ^ w)`` on
  whole words, with the hardware ``popc`` on CUDA (``libdevice.popc``) and a SWAR
  shift-and-mask popcount under the interpreter. 1-bit weights move 16x fewer bytes than bf16.
* **int8 dot** (larger M, compute-bound): words are expanded in registers to int8 +-1 tiles
  (``((w << (31 - b)) >> 31) | 1``) and multiplied with ``tl.dot(..., out_dtype=int32)``, which
  maps to int8 tensor cores (~989 T MAC/s on H100 vs ~124 T popcount MAC/s on CUDA cores).
  Zero pad bits expand to +1 on both sides, so ``dot = acc - (bits_processed - k)``.

The popcount GEMV splits K across programs for small N (too few output tiles for the SMs):
each split adds its exact int32 partial dot atomically (:func:`_xnor_gemv_configs`).

Binary weights x float activations (``binary_weight_gemm``), by M:

* **sign flip** (M <= :data:`BW_GEMV_MAX_M`): ``x * (+-1)`` is x with its sign bit xor-ed with
  the weight bit, added in fp32 on CUDA cores (:func:`_binary_weight_gemv_kernel`);
* **tensor cores** (larger M): +-1 halves built from the bits (sign bit | 1.0's exponent
  pattern, bitcast) feed ``tl.dot`` with fp32 accumulation.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (
    WORD_BITS,
    check,
    check_float,
    check_packed,
    check_words,
    num_words,
    validate_binary_conv2d,
    validate_binary_weight_gemm,
    validate_multibit_xnor_gemm,
    validate_sign_threshold,
    validate_xnor_gemm,
)

try:  # hardware popcount for compiled CUDA/HIP kernels (not usable under the interpreter)
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover
    libdevice = None

try:
    from triton import knobs as _knobs

    INTERPRET: bool = bool(_knobs.runtime.interpret)
except (ImportError, AttributeError):  # pragma: no cover - older Triton
    import os

    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: xnor GEMM / multi-plane GEMM: int8 tensor-core path from this many rows on.
DOT_MIN_M = 32
#: xnor GEMM on CUDA with ``path="auto"``, from DOT_MIN_M rows: both operands unpacked to +-1
#: int8 and multiplied by cuBLASLt (``torch._int_mm``) when its shape rules hold. On an H200 it
#: was 3.2x faster than this module's int8 Triton kernel at M=256 N=K=4096 and 1.7x at
#: M=N=K=4096, unpacking included (reports/gpu_runs/2026-11-26_h200).
INT_MM_AUTO = True
#: binary_weight_gemm: up to this many rows the sign-flip GEMV (no tensor cores), above it
#: +-1 halves built from the bits feed ``tl.dot``.
BW_GEMV_MAX_M = 4
#: packed conv: int8 tensor-core path from this many output positions (N * OH * OW) on.
CONV_DOT_MIN_P = 64


# =============================================================================================
# device helpers and autotune pruning
# =============================================================================================
@functools.lru_cache(maxsize=None)
def _max_shared_mem(device_index: int) -> int:
    try:
        props = triton.runtime.driver.active.utils.get_device_properties(device_index)
        return int(props["max_shared_mem"])
    except Exception:  # pragma: no cover - conservative default (A100/H100 have more)
        return 99 * 1024


def _current_smem() -> int:
    return _max_shared_mem(torch.cuda.current_device()) if torch.cuda.is_available() else 1 << 30


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _rows_block(configs, m: int, key: str = "BLOCK_M"):
    """Keep the configs whose row block is the smallest available one covering ``m``."""
    if not configs:
        return configs
    sizes = sorted({c.kwargs[key] for c in configs})
    want = next((s for s in sizes if s >= m), sizes[-1])
    return [c for c in configs if c.kwargs[key] == want]


def _interp(**kw) -> list[triton.Config]:
    """The single config used under TRITON_INTERPRET (no benchmarking, small numpy blocks)."""
    return [triton.Config(kw, num_warps=1, num_stages=1)]


def _popcount_configs() -> list[triton.Config]:
    """GEMV-regime tiles (M <= 16): few weight rows per program, long K steps.

    The (BLOCK_M, BLOCK_N, BLOCK_KW) popcount accumulator lives in registers (reduced once after
    the K loop), so BM * BN * BKW stays <= 32 words per thread. ``KSTAGES`` is the K loop's
    software-pipelining depth (``tl.range(num_stages=...)``: cp.async copies in flight).
    """
    shapes = [  # (BM, BN, BKW, warps, K stages)
        (1, 16, 128, 4, 3), (1, 8, 256, 4, 3), (1, 32, 128, 8, 3), (1, 16, 256, 8, 3),
        (1, 32, 64, 8, 4), (1, 64, 64, 8, 3),
        (4, 8, 64, 4, 3), (4, 16, 64, 8, 3), (4, 16, 32, 4, 4), (4, 32, 32, 8, 3),
        (16, 8, 32, 4, 3), (16, 16, 16, 4, 3), (16, 16, 32, 8, 3), (16, 32, 16, 8, 3),
    ]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_KW": bkw, "GROUP_M": 1,
                           "KSTAGES": st}, num_warps=w, num_stages=st)
            for bm, bn, bkw, w, st in shapes]


def _zero_output(nargs) -> None:
    """Split-K configs add their partial dots into ``c`` atomically: it must start at zero on
    every launch (a config ``pre_hook`` runs before each launch, benchmarked or not; the
    autotuner's ``reset_to_zero`` only covers its own benchmark runs)."""
    nargs["c_ptr"].zero_()


def _xnor_gemv_configs() -> list[triton.Config]:
    """The both-binary GEMV's configs: :func:`_popcount_configs` (``SPLIT_K = 1``) plus one-shot
    split-K tiles for small N, where N / BLOCK_N output tiles leave most of the SMs idle.

    Split-K (gemlite's "RevSplitK" idea): program (tile, s) reduces only the s-th of
    ``SPLIT_K`` contiguous K ranges and adds its exact partial dot ``k_s - 2 popcount_s`` into
    the zeroed int32 output with ``tl.atomic_add``; integer adds commute, so the result is
    exact and independent of the order the programs finish in.
    """
    base = [triton.Config({**c.kwargs, "SPLIT_K": 1}, num_warps=c.num_warps,
                          num_stages=c.num_stages) for c in _popcount_configs()]
    split = [  # (BM, BN, BKW, warps, K stages, SPLIT_K)
        (1, 16, 64, 4, 3, 2), (1, 16, 32, 4, 3, 4), (1, 8, 32, 4, 3, 4), (1, 16, 16, 4, 3, 8),
        (1, 16, 64, 4, 3, 4), (1, 8, 128, 4, 3, 8), (4, 8, 32, 4, 3, 4), (4, 16, 16, 4, 4, 8),
    ]
    return base + [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_KW": bkw, "GROUP_M": 1,
                                  "KSTAGES": st, "SPLIT_K": sk}, num_warps=w, num_stages=st,
                                 pre_hook=_zero_output)
                   for bm, bn, bkw, w, st, sk in split]


def _bw_gemv_configs() -> list[triton.Config]:
    """Binary-weight GEMV tiles (M <= 4, no tensor cores).

    The (BLOCK_M, BLOCK_N, BLOCK_KW, 32) fp32 accumulator lives in registers (reduced once
    after the K loop), so BM * BN * BKW * 32 / threads stays at 32-64 values per thread;
    weights stream through a pipelined K loop (``KSTAGES`` deep) while the activations, shared
    by every program, stay in cache (evict-last).
    """
    shapes = [  # (BM, BN, BKW, warps, K stages)
        (1, 16, 8, 4, 3), (1, 32, 8, 8, 3), (1, 8, 16, 4, 3), (1, 64, 4, 8, 3),
        (1, 16, 16, 8, 4),
        (4, 8, 8, 4, 3), (4, 16, 4, 4, 3), (4, 16, 8, 8, 3), (4, 32, 4, 8, 3),
    ]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_KW": bkw, "GROUP_M": 1,
                           "KSTAGES": st}, num_warps=w, num_stages=st)
            for bm, bn, bkw, w, st in shapes]


def _bw_gemv_word_configs() -> list[triton.Config]:
    """Tiles of the words-per-thread GEMV (:func:`_binary_weight_gemv_words_kernel`): its
    (BLOCK_M, BLOCK_N, BLOCK_KW) fp32 accumulator has no bit axis, so a K step can cover 32x
    more words than the lane layout's for the same registers (4-16 accumulators a thread)."""
    shapes = [  # (BM, BN, BKW, warps, K stages)
        (1, 32, 32, 4, 3), (1, 16, 64, 4, 3), (1, 64, 32, 8, 3), (1, 32, 64, 8, 3),
        (1, 128, 16, 8, 3), (1, 64, 64, 8, 3),
        (4, 16, 16, 4, 3), (4, 32, 8, 4, 3), (4, 8, 32, 4, 3),
    ]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_KW": bkw, "GROUP_M": 1,
                           "KSTAGES": st}, num_warps=w, num_stages=st)
            for bm, bn, bkw, w, st in shapes]


# Tile lists below were checked for register spills with ``python -m bnnbench.kernels.aot_check
# --all --arch 90`` (ptxas, no GPU needed); configs that spilled were dropped.
def _gemm_cfgs(shapes) -> list[triton.Config]:
    """Tensor-core tiles; their K loop is pipelined by the kernel's ``num_stages``
    (``KSTAGES`` is unused on this path)."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_KW": bkw, "GROUP_M": 8,
                           "KSTAGES": 1}, num_warps=w, num_stages=s)
            for bm, bn, bkw, w, s in shapes]


def _dot_configs() -> list[triton.Config]:
    return _gemm_cfgs([  # (BM, BN, BKW, warps, stages); BK = 32 * BKW bits
        (128, 256, 4, 8, 3), (128, 128, 4, 8, 3), (128, 128, 2, 8, 4), (128, 64, 4, 8, 4),
        (64, 128, 4, 8, 4), (64, 64, 4, 4, 4), (32, 64, 4, 4, 4), (16, 64, 4, 4, 4),
        (16, 128, 2, 4, 4),
    ])


def _multibit_dot_configs() -> list[triton.Config]:
    """Smaller tiles than :func:`_dot_configs`: the float accumulator adds register pressure."""
    return _gemm_cfgs([
        (128, 128, 4, 8, 3), (128, 64, 4, 8, 4), (64, 128, 4, 8, 4), (64, 64, 4, 4, 4),
        (32, 64, 4, 4, 4), (16, 64, 2, 4, 3),
    ])


def _smem_bytes(cfg: triton.Config, int8_tiles: bool) -> int:
    """Shared memory a GEMM config needs: the pipelined word tiles (+ the int8 operand tiles of
    the dot path), or the epilogue's int32 accumulator exchange (BM x BN x 4), whichever is
    larger (Triton reuses the buffer). Checked against ``kernel.metadata.shared`` of every kept
    config with ``aot_check --all`` (sm_90): the model is never below the compiled figure."""
    bm, bn, bkw = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_KW"]
    loop = cfg.num_stages * (bm + bn) * bkw * 4 + ((bm + bn) * bkw * WORD_BITS if int8_tiles else 0)
    return max(loop, bm * bn * 4 if int8_tiles else 0)


def _prune_popcount(configs, named_args, **kwargs):
    if INTERPRET:
        return _interp(BLOCK_M=16, BLOCK_N=16, BLOCK_KW=8, GROUP_M=1, KSTAGES=1)
    smem = _current_smem()
    keep = [c for c in configs if _smem_bytes(c, False) <= smem]
    # a GPU with less shared memory than every config models: the smallest one, not nothing
    return _rows_block(keep or [min(configs, key=lambda c: _smem_bytes(c, False))],
                       named_args["M"])


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    try:
        props = triton.runtime.driver.active.utils.get_device_properties(device_index)
        return int(props["multiprocessor_count"])
    except Exception:  # pragma: no cover - H100 SXM's count
        return 132


def _current_sms() -> int:
    return _num_sms(torch.cuda.current_device()) if torch.cuda.is_available() else 132


def _prune_xnor_gemv(configs, named_args, **kwargs):
    """:func:`_prune_popcount`, then split-K or not by the number of output tiles: when every
    unsplit tiling has fewer tiles than SMs (the small-N GEMV would stream its weights through
    a few SMs only), the split-K configs that keep the most SMs busy (each split at least one
    whole K step); otherwise only the ``SPLIT_K = 1`` ones."""
    if INTERPRET:
        return _interp(BLOCK_M=16, BLOCK_N=16, BLOCK_KW=8, GROUP_M=1, KSTAGES=1, SPLIT_K=1)
    keep = _prune_popcount(configs, named_args)
    m, n, kw = named_args["M"], named_args["N"], named_args["KW"]
    sms = _current_sms()

    def tiles(c):
        return triton.cdiv(m, c.kwargs["BLOCK_M"]) * triton.cdiv(n, c.kwargs["BLOCK_N"])

    def useful(c):  # every split gets at least one whole K step
        return c.kwargs["SPLIT_K"] * c.kwargs["BLOCK_KW"] <= kw

    unsplit = [c for c in keep if c.kwargs["SPLIT_K"] == 1]
    most_tiles = max((tiles(c) for c in unsplit), default=0)
    split = [c for c in keep if c.kwargs["SPLIT_K"] > 1 and useful(c)]
    if most_tiles < sms and split:  # every unsplit tiling leaves SMs idle

        def programs(c):
            return min(tiles(c) * c.kwargs["SPLIT_K"], sms)

        best = max(programs(c) for c in split)
        if best > most_tiles:  # the split tilings that keep the most SMs busy
            return [c for c in split if programs(c) == best]
    return unsplit or keep


def _prune_xnor_signs(configs, named_args, **kwargs):
    """:func:`_prune_popcount` for the signs-out GEMV, whose configs carry ``SPLIT_K = 1``."""
    if INTERPRET:
        return _interp(BLOCK_M=16, BLOCK_N=16, BLOCK_KW=8, GROUP_M=1, KSTAGES=1, SPLIT_K=1)
    return _prune_popcount(configs, named_args)


def _prune_bw_gemv(configs, named_args, **kwargs):
    """Both binary-weight GEMV layouts (lanes and words): the row block that fits M."""
    if INTERPRET:
        return _interp(BLOCK_M=4, BLOCK_N=8, BLOCK_KW=4, GROUP_M=1, KSTAGES=1)
    return _rows_block(configs, named_args["M"])


def _prune_dot(configs, named_args, **kwargs):
    if INTERPRET:
        return _interp(BLOCK_M=16, BLOCK_N=16, BLOCK_KW=2, GROUP_M=4, KSTAGES=1)
    smem = _current_smem()
    m = named_args["M"]
    keep = [c for c in configs if _smem_bytes(c, True) <= smem] or [
        min(configs, key=lambda c: _smem_bytes(c, True))]
    # no row block much larger than M (wasted MMA rows); keep at least the smallest ones
    small = [c for c in keep if c.kwargs["BLOCK_M"] <= max(16, _pow2_at_least(m))]
    return small or keep[-2:]


def _prune_xnor_dot(configs, named_args, **kwargs):
    """:func:`_prune_dot` for the xnor GEMM kernel, whose configs also carry ``SPLIT_K = 1``."""
    if INTERPRET:
        return _interp(BLOCK_M=16, BLOCK_N=16, BLOCK_KW=2, GROUP_M=4, KSTAGES=1, SPLIT_K=1)
    return _prune_dot(configs, named_args)


def _prune_bw(configs, named_args, **kwargs):
    if INTERPRET:
        return _interp(BLOCK_M=16, BLOCK_N=16, BLOCK_KW=2, GROUP_M=4, KSTAGES=1)
    smem = _current_smem()
    m = named_args["M"]
    x = named_args["x_ptr"]
    esz = x.element_size()
    allowed = {str(c) for c in _bw_configs_for(x.dtype)}
    keep = []
    for c in configs:
        if str(c) not in allowed:
            continue
        bm, bn, bkw = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_KW"]
        need = c.num_stages * (bm * bkw * WORD_BITS * esz + bn * bkw * 4) + bn * bkw * 32 * esz
        if need <= smem and bm <= max(16, _pow2_at_least(m)):
            keep.append(c)
    return keep or configs[-1:]


def _bw_configs() -> list[triton.Config]:
    return _gemm_cfgs([  # (BM, BN, BKW, warps, stages): GEMV-like (BM=16) first, then GEMM
        (16, 32, 4, 4, 4), (16, 64, 4, 4, 4), (16, 64, 8, 4, 3), (16, 128, 4, 4, 4),
        (16, 256, 2, 8, 3), (32, 32, 2, 4, 4), (32, 64, 4, 4, 4), (64, 32, 2, 4, 3),
        (64, 64, 2, 4, 4), (64, 128, 2, 4, 3), (128, 128, 2, 8, 3), (128, 256, 1, 8, 3),
    ])


def _bw_configs_for(dtype: torch.dtype) -> list[triton.Config]:
    """The binary-weight configs usable for activations of ``dtype`` (before device pruning).

    fp32 runs as 3xTF32 (``input_precision="tf32x3"``: the +-1 weights are exact in tf32 and
    x is split in two tf32 parts), which needs more registers: smaller tiles only.
    """
    cfgs = _bw_configs()
    if dtype == torch.float32:
        cfgs = [c for c in cfgs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] *
                c.kwargs["BLOCK_KW"] <= 32 * 32 * 2]
    return cfgs


def _conv_configs(dot: bool) -> list[triton.Config]:
    if dot:  # (BLOCK_P, BLOCK_OC, BLOCK_CW, warps, stages)
        shapes = [(128, 64, 1, 8, 3), (64, 128, 2, 8, 3), (64, 64, 2, 8, 3), (64, 64, 1, 4, 3),
                  (32, 64, 2, 4, 3), (16, 64, 2, 4, 3)]
    else:
        shapes = [(16, 32, 4, 4, 2), (16, 64, 2, 4, 2), (32, 32, 2, 4, 2), (32, 64, 1, 4, 2),
                  (64, 32, 1, 4, 2), (16, 64, 4, 8, 2)]
    return [triton.Config({"BLOCK_P": bp, "BLOCK_OC": boc, "BLOCK_CW": bcw},
                          num_warps=w, num_stages=s) for bp, boc, bcw, w, s in shapes]


def _prune_conv(configs, named_args, **kwargs):
    if INTERPRET:
        return _interp(BLOCK_P=16, BLOCK_OC=16, BLOCK_CW=2)
    cw = named_args["CW"]
    keep = [c for c in configs if c.kwargs["BLOCK_CW"] <= max(1, _pow2_at_least(cw))]
    return keep or configs[-1:]


# =============================================================================================
# jit helpers
# =============================================================================================
@triton.jit
def _popcount(x, HW_POPC: tl.constexpr):
    """Per-lane popcount of int32 words (hardware popc on CUDA, SWAR otherwise)."""
    if HW_POPC:
        r = libdevice.popc(x)
    else:
        u = x.to(tl.uint32, bitcast=True)  # logical shifts below
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = (u * 0x01010101) >> 24
        r = u.to(tl.int32)
    return r


@triton.jit
def _expand_pm1_half(words, bit, ONE_BITS: tl.constexpr):
    """int32 words (broadcast against ``bit``) -> +-1.0 as 16-bit float bit patterns (uint16).

    The weight bit becomes the sign bit and ``ONE_BITS`` (1.0: 0x3F80 bf16, 0x3C00 fp16) the
    rest: two shifts and one and-or per weight (no integer-to-float conversion, whose
    throughput on the SM is a fraction of plain integer operations). Bitcast to the float type.
    """
    u = words.to(tl.uint32, bitcast=True)
    return ((((u << (31 - bit)) >> 16) & 0x8000) | ONE_BITS).to(tl.uint16)


@triton.jit
def _expand_pm1(words, bit):
    """int32 words (broadcast against ``bit`` = arange(32)) -> +1 (bit 0) / -1 (bit 1) int32."""
    return ((words << (31 - bit)) >> 31) | 1


@triton.jit
def _xnor_tile_popcount(a_ptr, w_ptr, offs_m, offs_n, M, N, KW_START, KW_END,
                        stride_am, stride_ak, stride_wn, stride_wk,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
                        HW_POPC: tl.constexpr, KSTAGES: tl.constexpr):
    """sum over words [KW_START, KW_END) of popcount(a[m] ^ w[n]) for a (BLOCK_M, BLOCK_N)
    tile (masked words are 0).

    Memory-bound GEMV regime: every weight word is read once, so the loop (1) keeps one
    popcount partial per (m, n, word lane) and reduces across lanes once after the loop, not
    every step; (2) is software-pipelined ``KSTAGES`` deep (cp.async copies in flight); (3)
    streams weights with evict-first and keeps the small activation rows with evict-last.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KW), dtype=tl.int32)
    offs_w = tl.arange(0, BLOCK_KW)
    m_mask = offs_m < M
    n_mask = offs_n < N
    for kw0 in tl.range(KW_START, KW_END, BLOCK_KW, num_stages=KSTAGES):
        kk = kw0 + offs_w
        k_mask = kk < KW_END
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=m_mask[:, None] & k_mask[None, :], other=0, eviction_policy="evict_last")
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=n_mask[:, None] & k_mask[None, :], other=0,
                    eviction_policy="evict_first")
        acc += _popcount(a[:, None, :] ^ w[None, :, :], HW_POPC)
    return tl.sum(acc, axis=2)


@triton.jit
def _xnor_tile_dot(a_ptr, w_ptr, offs_m, offs_n, M, N, KW,
                   stride_am, stride_ak, stride_wn, stride_wk,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr):
    """int8 tensor-core +-1 dot over all bits of ceil(KW/BLOCK_KW)*BLOCK_KW words (pads = +1)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    offs_w = tl.arange(0, BLOCK_KW)
    bit = tl.arange(0, 32)
    m_mask = offs_m < M
    n_mask = offs_n < N
    for kw0 in range(0, KW, BLOCK_KW):
        kk = kw0 + offs_w
        k_mask = kk < KW
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=m_mask[:, None] & k_mask[None, :], other=0)            # (BM, BKW)
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + kk[:, None] * stride_wk,
                    mask=n_mask[None, :] & k_mask[:, None], other=0)            # (BKW, BN)
        av = _expand_pm1(a[:, :, None], bit[None, None, :])                     # (BM, BKW, 32)
        wv = _expand_pm1(w[:, None, :], bit[None, :, None])                     # (BKW, 32, BN)
        av = tl.reshape(av, (BLOCK_M, BLOCK_KW * 32)).to(tl.int8)
        wv = tl.reshape(wv, (BLOCK_KW * 32, BLOCK_N)).to(tl.int8)
        acc = tl.dot(av, wv, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _xnor_tile(a_ptr, w_ptr, offs_m, offs_n, M, N, KW, k,
               stride_am, stride_ak, stride_wn, stride_wk,
               USE_DOT: tl.constexpr, HW_POPC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
               KSTAGES: tl.constexpr):
    """Exact int32 dots of one (BLOCK_M, BLOCK_N) tile: int8 ``tl.dot`` or popcount.

    dot path: the padding bits past ``k`` unpack to +1 in both operands, so they add
    ``KW_padded * 32 - k`` to every product, which is taken off; popcount path: the padding
    bits are 0 in both operands and cancel in the XOR, ``dot = k - 2 * popcount``.
    """
    if USE_DOT:
        acc = _xnor_tile_dot(a_ptr, w_ptr, offs_m, offs_n, M, N, KW, stride_am, stride_ak,
                             stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_KW)
        dot = acc - (tl.cdiv(KW, BLOCK_KW) * BLOCK_KW * 32 - k)
    else:
        pop = _xnor_tile_popcount(a_ptr, w_ptr, offs_m, offs_n, M, N, 0, KW, stride_am,
                                  stride_ak, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_KW,
                                  HW_POPC, KSTAGES)
        dot = k - 2 * pop
    return dot


@triton.jit
def _scale_bias(y, scale_ptr, bias_ptr, offs_n, n_mask,
                HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Per-output-channel epilogue ``y * scale[n] + bias[n]`` (each term optional)."""
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    return y


@triton.jit
def _store_signs(out_ptr, dot, row_off, row_mask, offs_n, n0, N, t_ptr, f_ptr, stride_ow,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Fused BatchNorm-threshold + sign + pack epilogue: the next binary layer's input words.

    For output channel n the folded BatchNorm -> sign is ``bit = (dot < t[n]) XOR f[n]``
    (bit 1 = -1, the packing convention; ``t``/``f`` from the fold in bnnbench.packed.fusion),
    so the tile's exact int32 dots become bits, packed 32 channels per int32 word, LSB first,
    channels past N zero. A tile of ``BLOCK_N`` channels starting at ``n0`` (a multiple of
    BLOCK_N) fills ``max(1, BLOCK_N / 32)`` words; tiles narrower than a word share it, so the
    words are OR-ed atomically into the zeroed output (exact: the bits are disjoint, and OR-ing
    the same bits again, as autotuner re-runs do, changes nothing).
    """
    n_mask = offs_n < N
    t = tl.load(t_ptr + offs_n, mask=n_mask, other=0)
    f = tl.load(f_ptr + offs_n, mask=n_mask, other=0) & 1
    bits = ((dot < t[None, :]).to(tl.int32) ^ f[None, :]) & n_mask[None, :].to(tl.int32)
    shifted = bits << (offs_n % 32)[None, :]
    WPT: tl.constexpr = (BLOCK_N + 31) // 32  # words per tile (BLOCK_N is a power of two)
    # distinct bits: their int32 sum is their OR (bit 31 wraps to the sign bit)
    words = tl.sum(tl.reshape(shifted, (BLOCK_M, WPT, BLOCK_N // WPT)), axis=2)
    widx = n0 // 32 + tl.arange(0, WPT)
    tl.atomic_or(out_ptr + row_off[:, None] + widx[None, :] * stride_ow, words,
                 mask=row_mask[:, None] & (widx[None, :] < tl.cdiv(N, 32)), sem="relaxed")


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped (L2-friendly) program ordering from Triton tutorial 03."""
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


# =============================================================================================
# kernels
# =============================================================================================
@triton.jit
def _pack_signs_kernel(x_ptr, out_ptr, R, K, KW, stride_xr, stride_xk, stride_or,
                       BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[r, j] = sum_b [x[r, 32 j + b] < 0] << b   (zero for 32 j + b >= K)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    kk = offs_w[:, None] * 32 + bit[None, :]                                    # (BW, 32)
    mask = (offs_r[:, None, None] < R) & (kk[None, :, :] < K)
    x = tl.load(x_ptr + offs_r[:, None, None] * stride_xr + kk[None, :, :] * stride_xk,
                mask=mask, other=0.0)
    neg = (x < 0).to(tl.int32)
    words = tl.sum(neg << bit[None, None, :], axis=2)  # distinct bits: the sum is an OR
    tl.store(out_ptr + offs_r[:, None] * stride_or + offs_w[None, :], words,
             mask=(offs_r[:, None] < R) & (offs_w[None, :] < KW))


@triton.jit
def _unpack_signs_kernel(p_ptr, out_ptr, R, n, KW, stride_pr, stride_or,
                         BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[r, k] = 1 - 2 * ((p[r, k // 32] >> (k % 32)) & 1) for k < n.

    Each program loads a (BLOCK_R, BLOCK_W) tile of words once and expands it in registers to
    (BLOCK_R, 32 * BLOCK_W) values: one load per word, not one per output element, and wide
    contiguous stores (the int8 unpack feeds cuBLASLt in the large-M xnor GEMM).
    """
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    words = tl.load(p_ptr + offs_r[:, None] * stride_pr + offs_w[None, :],
                    mask=(offs_r[:, None] < R) & (offs_w[None, :] < KW), other=0)
    v = _expand_pm1(words[:, :, None], bit[None, None, :])                     # (BR, BW, 32)
    v = tl.reshape(v, (BLOCK_R, BLOCK_W * 32))
    offs_k = tl.program_id(1) * BLOCK_W * 32 + tl.arange(0, BLOCK_W * 32)
    tl.store(out_ptr + offs_r[:, None] * stride_or + offs_k[None, :],
             v.to(out_ptr.dtype.element_ty), mask=(offs_r[:, None] < R) & (offs_k[None, :] < n))


@triton.jit
def _xnor_gemm_kernel(a_ptr, w_ptr, c_ptr, M, N, KW, k,
                      stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                      t_ptr, f_ptr,
                      USE_DOT: tl.constexpr, HW_POPC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
                      GROUP_M: tl.constexpr, KSTAGES: tl.constexpr, SPLIT_K: tl.constexpr,
                      SIGNS_OUT: tl.constexpr = False):
    """c[m, n] = sum_k a_pm[m, k] * w_pm[n, k]  (int32, exact).

    ``SIGNS_OUT`` (``SPLIT_K = 1`` only: the threshold needs the whole dot): c is instead the
    next layer's packed input, (M, ceil(N/32)) int32 words, zeroed, bit n of row m =
    ``(dot[m, n] < t[n]) XOR f[n]`` (:func:`_store_signs`, the folded BatchNorm -> sign).

    ``SPLIT_K > 1`` (popcount path only; launched on a (tiles, SPLIT_K) grid into a zeroed
    ``c``): program s covers the words [s * chunk, (s + 1) * chunk), chunk a whole number of
    K steps, i.e. ``k_s = clamp(min(k, 32 * end) - 32 * start, 0)`` true bits, and adds its
    exact partial ``k_s - 2 * popcount_s`` with an int32 atomic add; the partials sum to
    ``k - 2 * popcount``.
    """
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if SPLIT_K == 1:
        dot = _xnor_tile(a_ptr, w_ptr, offs_m, offs_n, M, N, KW, k, stride_am, stride_ak,
                         stride_wn, stride_wk, USE_DOT, HW_POPC, BLOCK_M, BLOCK_N, BLOCK_KW,
                         KSTAGES)
        if SIGNS_OUT:
            _store_signs(c_ptr, dot, offs_m * stride_cm, offs_m < M, offs_n, pid_n * BLOCK_N,
                         N, t_ptr, f_ptr, stride_cn, BLOCK_M, BLOCK_N)
        else:
            tl.store(c_ptrs, dot, mask=mask)
    else:
        tl.static_assert(not USE_DOT, "split-K is a popcount-path option")
        tl.static_assert(not SIGNS_OUT, "the signs epilogue needs whole dots (SPLIT_K = 1)")
        chunk = tl.cdiv(tl.cdiv(KW, SPLIT_K), BLOCK_KW) * BLOCK_KW
        start = tl.program_id(axis=1) * chunk
        end = tl.minimum(start + chunk, KW)
        pop = _xnor_tile_popcount(a_ptr, w_ptr, offs_m, offs_n, M, N, start, end, stride_am,
                                  stride_ak, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_KW,
                                  HW_POPC, KSTAGES)
        k_s = tl.maximum(tl.minimum(k, end * 32) - start * 32, 0)
        tl.atomic_add(c_ptrs, k_s - 2 * pop, mask=mask, sem="relaxed")


@triton.jit
def _multibit_gemm_kernel(a_ptr, w_ptr, alpha_ptr, scale_ptr, bias_ptr, y_ptr,
                          P, M, N, KW, k,
                          stride_ap, stride_am, stride_ak, stride_wn, stride_wk,
                          stride_alp, stride_alm, stride_ym, stride_yn,
                          HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                          USE_DOT: tl.constexpr, HW_POPC: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
                          GROUP_M: tl.constexpr, KSTAGES: tl.constexpr):
    """y[m, n] = scale[n] * sum_p alpha[p, m] * xnor_dot(H_p[m], W[n]) + bias[n], one launch."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p in range(P):
        dot = _xnor_tile(a_ptr + p * stride_ap, w_ptr, offs_m, offs_n, M, N, KW, k, stride_am,
                         stride_ak, stride_wn, stride_wk, USE_DOT, HW_POPC, BLOCK_M, BLOCK_N,
                         BLOCK_KW, KSTAGES)
        al = tl.load(alpha_ptr + p * stride_alp + offs_m * stride_alm, mask=m_mask, other=0.0)
        y += al[:, None] * dot.to(tl.float32)
    y = _scale_bias(y, scale_ptr, bias_ptr, offs_n, n_mask, HAS_SCALE, HAS_BIAS)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             y.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _binary_weight_gemm_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, KW,
                               stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                               HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                               FP32_MODE: tl.constexpr, ONE_BITS: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_KW: tl.constexpr, GROUP_M: tl.constexpr,
                               KSTAGES: tl.constexpr):
    """y[m, n] = scale[n] * sum_k x[m, k] * w_pm[n, k] + bias[n]; weights expanded in registers."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_w = tl.arange(0, BLOCK_KW)
    offs_b = tl.arange(0, BLOCK_KW * 32)
    bit = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kw0 in range(0, KW, BLOCK_KW):
        kb = kw0 * 32 + offs_b
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kb[None, :] * stride_xk,
                    mask=m_mask[:, None] & (kb[None, :] < K), other=0.0)         # (BM, BK)
        kk = kw0 + offs_w
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + kk[:, None] * stride_wk,
                    mask=n_mask[None, :] & (kk[:, None] < KW), other=0,
                    eviction_policy="evict_first")                              # (BKW, BN)
        if FP32_MODE == 0:  # fp16 / bf16: +-1 built from bits, bitcast
            wv = _expand_pm1_half(w[:, None, :], bit[None, :, None], ONE_BITS)  # (BKW, 32, BN)
            wv = tl.reshape(wv, (BLOCK_KW * 32, BLOCK_N)).to(x_ptr.dtype.element_ty,
                                                              bitcast=True)
        else:
            wv = _expand_pm1(w[:, None, :], bit[None, :, None])                 # (BKW, 32, BN)
            wv = tl.reshape(wv, (BLOCK_KW * 32, BLOCK_N)).to(x_ptr.dtype.element_ty)
        if FP32_MODE == 1:  # interpreter: exact fp32
            acc = tl.dot(x, wv, acc, input_precision="ieee")
        elif FP32_MODE == 2:  # CUDA fp32 activations: 3xTF32 tensor-core products
            acc = tl.dot(x, wv, acc, input_precision="tf32x3")
        else:  # fp16 / bf16
            acc = tl.dot(x, wv, acc)
    acc = _scale_bias(acc, scale_ptr, bias_ptr, offs_n, n_mask, HAS_SCALE, HAS_BIAS)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _binary_weight_gemv_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, KW,
                               stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                               HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_KW: tl.constexpr, GROUP_M: tl.constexpr,
                               KSTAGES: tl.constexpr):
    """Binary-weight GEMV (few rows): y[m, n] = scale[n] * sum_k x[m, k] * s[n, k] + bias[n].

    No multiply and no tensor cores: ``x * s`` with ``s = -1`` (weight bit 1) is x with its
    sign bit flipped, so each product is ``bits(x) ^ (w_bit << 31)`` on x's fp32 pattern,
    bitcast back and added in fp32. x is converted to fp32 once per K step (it is shared by
    the BLOCK_N weight rows), so per weight there is a shift and an xor-with-mask, no
    int-to-float conversion. Every (m, n, word, bit) lane keeps its own fp32 partial sum
    across the pipelined K loop and the lanes are reduced once after it: the loop body is
    elementwise only (no cross-lane reduction per K step).
    Pad bits (0) and masked x (0.0) add +-0.
    """
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_w = tl.arange(0, BLOCK_KW)
    bit = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KW, 32), dtype=tl.float32)
    for kw0 in tl.range(0, KW, BLOCK_KW, num_stages=KSTAGES):
        kk = kw0 + offs_w
        kb = kk[:, None] * 32 + bit[None, :]                                    # (BKW, 32)
        x = tl.load(x_ptr + offs_m[:, None, None] * stride_xm + kb[None, :, :] * stride_xk,
                    mask=m_mask[:, None, None] & (kb[None, :, :] < K), other=0.0,
                    eviction_policy="evict_last")                               # (BM, BKW, 32)
        xb = x.to(tl.float32).to(tl.uint32, bitcast=True)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=n_mask[:, None] & (kk[None, :] < KW), other=0,
                    eviction_policy="evict_first").to(tl.uint32, bitcast=True)  # (BN, BKW)
        flip = (w[:, :, None] << (31 - bit)[None, None, :]) & 0x80000000        # (BN, BKW, 32)
        acc += (xb[:, None, :, :] ^ flip[None, :, :, :]).to(tl.float32, bitcast=True)
    y = tl.sum(tl.sum(acc, axis=3), axis=2)
    y = _scale_bias(y, scale_ptr, bias_ptr, offs_n, n_mask, HAS_SCALE, HAS_BIAS)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             y.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _binary_weight_gemv_words_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, KW,
                                     stride_xm, stride_xk, stride_wn, stride_wk, stride_ym,
                                     stride_yn,
                                     HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                     BLOCK_KW: tl.constexpr, GROUP_M: tl.constexpr,
                                     KSTAGES: tl.constexpr):
    """The sign-flip GEMV of :func:`_binary_weight_gemv_kernel` with whole words per thread.

    Same math (``x * s`` = x with its sign bit xor-ed with the weight bit, fp32 sums), other
    layout: the (BLOCK_M, BLOCK_N, BLOCK_KW) accumulator has no bit axis. Each thread keeps
    its weight words in registers and walks their 32 bits in an unrolled loop, extracting bit
    b with a constant shift (``(w << (31 - b)) & 0x80000000``); for bit b it reads the
    activations ``x[m, 32 kw + b]`` straight from global memory (cached: every bit of a word
    hits the same 64-byte line). In the lane layout a word's 32 bits sat across the lanes of a
    warp, so every product fetched its word through shared memory; here the K step's inner loop
    has no shared-memory traffic: per weight bit one shift, one and-xor (LOP3) and one FADD per
    activation row.

    sm_90 SASS of one K step (``python -m bnnbench.kernels.aot_check --arch 90 --all --counts
    --only binary_weight_gemv``, bf16 x; products = multiply-adds per thread per K step):

    ========================  =========  ========  =====  ================  =============
    layout, tile (M N KW) w   products   instrs    LDS    instrs/product    LDS/product
    ========================  =========  ========  =====  ================  =============
    lanes, 1x16x8 w4          32         175       37     5.5               1.16
    words, 1x32x32 w4         256        1041      3      4.1               0.012
    lanes, 4x16x4 w4          64         213       11     3.3               0.17
    words, 4x16x16 w4         256        1602      3      6.3               0.012
    words, 4x8x32 w4          256        1036      3      4.0 (+64 BAR)     0.012
    ========================  =========  ========  =====  ================  =============

    One row (M = 1): the LDS per product are gone and the K step is 26% shorter per product
    (256 LOP3 + 256 FADD, one each per product; 109 SHF + 175 IMAD for the constant shifts;
    32 LDG + 32 PRMT, one activation load and bf16 -> fp32 conversion per bit, shared by the
    thread's weight rows). Four rows: each thread loads and converts its own activations per
    bit (128 LDG + 128 PRMT), so the lanes layout, whose one LDS serves all four rows, has
    fewer instructions per product: ``binary_weight_gemm(gemv_layout="auto")`` takes words for
    M = 1 and lanes for 2-4 rows until the GPU bench says otherwise. fp16 x gives the same
    picture; fp32 x is copied through shared memory by the pipeliner (cp.async), 3 LDS per step
    at M = 1, 35 at M = 4. Every kept tile compiles without spills.
    """
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_w = tl.arange(0, BLOCK_KW)
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KW), dtype=tl.float32)
    for kw0 in tl.range(0, KW, BLOCK_KW, num_stages=KSTAGES):
        kk = kw0 + offs_w
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=n_mask[:, None] & (kk[None, :] < KW), other=0,
                    eviction_policy="evict_first").to(tl.uint32, bitcast=True)  # (BN, BKW)
        x_row = x_ptr + offs_m[:, None] * stride_xm + (kk * 32)[None, :] * stride_xk
        for b in tl.static_range(32):
            x = tl.load(x_row + b * stride_xk,
                        mask=m_mask[:, None] & ((kk * 32 + b)[None, :] < K), other=0.0,
                        eviction_policy="evict_last")                           # (BM, BKW)
            xb = x.to(tl.float32).to(tl.uint32, bitcast=True)
            flip = (w << (31 - b)) & 0x80000000                                 # (BN, BKW)
            acc += (xb[:, None, :] ^ flip[None, :, :]).to(tl.float32, bitcast=True)
    y = tl.sum(acc, axis=2)
    y = _scale_bias(y, scale_ptr, bias_ptr, offs_n, n_mask, HAS_SCALE, HAS_BIAS)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             y.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _pack_conv_input_kernel(x_ptr, out_ptr, R, H, W, G, Cg, CW,
                            stride_xn, stride_xc, stride_xh, stride_xw,
                            BLOCK_R: tl.constexpr, BLOCK_CW: tl.constexpr):
    """NCHW float -> (N, H, W, G, CW) channel-packed signs, row r = ((n H + h) W + w) G + g."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_w = tl.program_id(1) * BLOCK_CW + tl.arange(0, BLOCK_CW)
    bit = tl.arange(0, 32)
    g = offs_r % G
    t = offs_r // G
    w_ = t % W
    t = t // W
    h = t % H
    n = t // H
    c = offs_w[:, None] * 32 + bit[None, :]                                     # (BCW, 32)
    base = n * stride_xn + (g * Cg) * stride_xc + h * stride_xh + w_ * stride_xw
    mask = (offs_r[:, None, None] < R) & (c[None, :, :] < Cg)
    x = tl.load(x_ptr + base[:, None, None] + c[None, :, :] * stride_xc, mask=mask, other=0.0)
    words = tl.sum((x < 0).to(tl.int32) << bit[None, None, :], axis=2)
    tl.store(out_ptr + offs_r[:, None] * CW + offs_w[None, :], words,
             mask=(offs_r[:, None] < R) & (offs_w[None, :] < CW))


@triton.jit
def _binary_conv2d_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr,
                          NB, H, W, OH, OW, CW, Cg, OCg, KH, KWD,
                          stride_h, stride_w, pad_h, pad_w,
                          sx_n, sx_h, sx_w, sx_g, sx_c, sw_o, sw_r, sw_s, sw_c,
                          sy_n, sy_c, sy_h, sy_w, t_ptr, f_ptr,
                          HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                          USE_DOT: tl.constexpr, HW_POPC: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_OC: tl.constexpr,
                          BLOCK_CW: tl.constexpr, SIGNS_OUT: tl.constexpr = False):
    """Implicit-GEMM conv of channel-packed signs, exact ZERO padding.

    popcount path: dot[p, o] = sum_{valid taps} (Cg - 2 popcount(x_tap ^ w_tap)), i.e.
    n_valid(p) * Cg - 2 * popcount over valid taps only (padded taps contribute 0).
    int8 path: expanded x is 0 at padded taps and pad channels, +-1 elsewhere.
    ``SIGNS_OUT`` (groups = 1): y is the next conv's packed input, (N, OH, OW, ceil(OC/32))
    int32 words (``sy_c`` the word stride), from the folded BatchNorm -> sign
    (:func:`_store_signs`) instead of float outputs.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    g = tl.program_id(2)
    P = NB * OH * OW
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    n = offs_p // (OH * OW)
    rem = offs_p % (OH * OW)
    oh = rem // OW
    ow = rem % OW
    offs_ocl = pid_c * BLOCK_OC + tl.arange(0, BLOCK_OC)
    oc_mask = offs_ocl < OCg
    offs_oc = g * OCg + offs_ocl
    offs_cw = tl.arange(0, BLOCK_CW)
    bit = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_P, BLOCK_OC), dtype=tl.int32)
    nvalid = tl.zeros((BLOCK_P,), dtype=tl.int32)
    for r in range(KH):
        ih = oh * stride_h - pad_h + r
        for s in range(KWD):
            iw = ow * stride_w - pad_w + s
            valid = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_base = x_ptr + n * sx_n + ih * sx_h + iw * sx_w + g * sx_g
            w_base = w_ptr + offs_oc * sw_o + r * sw_r + s * sw_s
            for c0 in range(0, CW, BLOCK_CW):
                cc = c0 + offs_cw
                c_mask = cc < CW
                xw = tl.load(x_base[:, None] + cc[None, :] * sx_c,
                             mask=valid[:, None] & c_mask[None, :], other=0)   # (BP, BCW)
                if USE_DOT:
                    ww = tl.load(w_base[None, :] + cc[:, None] * sw_c,
                                 mask=oc_mask[None, :] & c_mask[:, None], other=0)  # (BCW, BOC)
                    ch = cc[:, None] * 32 + bit[None, :]                         # (BCW, 32)
                    xv = _expand_pm1(xw[:, :, None], bit[None, None, :])
                    keep = valid[:, None, None] & (ch[None, :, :] < Cg)
                    xv = tl.where(keep, xv, 0)
                    xv = tl.reshape(xv, (BLOCK_P, BLOCK_CW * 32)).to(tl.int8)
                    wv = _expand_pm1(ww[:, None, :], bit[None, :, None])
                    wv = tl.reshape(wv, (BLOCK_CW * 32, BLOCK_OC)).to(tl.int8)
                    acc = tl.dot(xv, wv, acc, out_dtype=tl.int32)
                else:
                    ww = tl.load(w_base[:, None] + cc[None, :] * sw_c,
                                 mask=oc_mask[:, None] & c_mask[None, :], other=0)  # (BOC, BCW)
                    pc = tl.sum(_popcount(xw[:, None, :] ^ ww[None, :, :], HW_POPC), axis=2)
                    acc += tl.where(valid[:, None], pc, 0)
            nvalid += valid.to(tl.int32)
    if USE_DOT:
        dot = acc
    else:
        dot = nvalid[:, None] * Cg - 2 * acc
    y_off = n * sy_n + oh * sy_h + ow * sy_w
    if SIGNS_OUT:
        _store_signs(y_ptr, dot, y_off, p_mask, offs_oc, pid_c * BLOCK_OC, OCg, t_ptr, f_ptr,
                     sy_c, BLOCK_P, BLOCK_OC)
    else:
        y = dot.to(tl.float32)
        y = _scale_bias(y, scale_ptr, bias_ptr, offs_oc, oc_mask, HAS_SCALE, HAS_BIAS)
        tl.store(y_ptr + y_off[:, None] + offs_oc[None, :] * sy_c, y.to(y_ptr.dtype.element_ty),
                 mask=p_mask[:, None] & oc_mask[None, :])


# autotuned entry points (one jit body, two config sets where there are two paths)
_xnor_gemm_popcount = triton.autotune(_xnor_gemv_configs(), key=["M", "N", "KW"],
                                      prune_configs_by={"early_config_prune": _prune_xnor_gemv},
                                      reset_to_zero=["c_ptr"])(_xnor_gemm_kernel)
_xnor_gemm_dot = triton.autotune([triton.Config({**c.kwargs, "SPLIT_K": 1},
                                                num_warps=c.num_warps, num_stages=c.num_stages)
                                  for c in _dot_configs()], key=["M", "N", "KW"],
                                 prune_configs_by={"early_config_prune": _prune_xnor_dot}
                                 )(_xnor_gemm_kernel)
# the fused BatchNorm-threshold + sign + pack epilogue: whole dots only (no split-K)
_xnor_signs_popcount = triton.autotune([triton.Config({**c.kwargs, "SPLIT_K": 1},
                                                      num_warps=c.num_warps,
                                                      num_stages=c.num_stages)
                                        for c in _popcount_configs()], key=["M", "N", "KW"],
                                       prune_configs_by={"early_config_prune": _prune_xnor_signs}
                                       )(_xnor_gemm_kernel)
_xnor_signs_dot = triton.autotune([triton.Config({**c.kwargs, "SPLIT_K": 1},
                                                 num_warps=c.num_warps, num_stages=c.num_stages)
                                   for c in _dot_configs()], key=["M", "N", "KW"],
                                  prune_configs_by={"early_config_prune": _prune_xnor_dot}
                                  )(_xnor_gemm_kernel)
_multibit_popcount = triton.autotune(_popcount_configs(), key=["P", "M", "N", "KW"],
                                     prune_configs_by={"early_config_prune": _prune_popcount}
                                     )(_multibit_gemm_kernel)
_multibit_dot = triton.autotune(_multibit_dot_configs(), key=["P", "M", "N", "KW"],
                                prune_configs_by={"early_config_prune": _prune_dot}
                                )(_multibit_gemm_kernel)
_binary_weight_gemm = triton.autotune(_bw_configs(), key=["M", "N", "KW"],
                                      prune_configs_by={"early_config_prune": _prune_bw}
                                      )(_binary_weight_gemm_kernel)
_binary_weight_gemv = triton.autotune(_bw_gemv_configs(), key=["M", "N", "KW"],
                                      prune_configs_by={"early_config_prune": _prune_bw_gemv}
                                      )(_binary_weight_gemv_kernel)
_binary_weight_gemv_words = triton.autotune(_bw_gemv_word_configs(), key=["M", "N", "KW"],
                                            prune_configs_by={"early_config_prune":
                                                              _prune_bw_gemv}
                                            )(_binary_weight_gemv_words_kernel)
_conv_popcount = triton.autotune(_conv_configs(False), key=["NB", "OH", "OW", "CW", "OCg", "KH"],
                                 prune_configs_by={"early_config_prune": _prune_conv}
                                 )(_binary_conv2d_kernel)
_conv_dot = triton.autotune(_conv_configs(True), key=["NB", "OH", "OW", "CW", "OCg", "KH"],
                            prune_configs_by={"early_config_prune": _prune_conv}
                            )(_binary_conv2d_kernel)


# =============================================================================================
# launchers
# =============================================================================================
def _check_launchable(op: str, device: torch.device) -> None:
    check(device.type == "cuda" or (device.type == "cpu" and INTERPRET), op,
          f"Triton kernels need CUDA tensors, got {device}; on CPU set TRITON_INTERPRET=1 before "
          "the first Triton call (tests only) or use backend='cpu'")


def _hw_popc(device: torch.device) -> bool:
    return device.type == "cuda" and not INTERPRET and libdevice is not None


def _gemm_grid(m: int, n: int):
    """1-D launch grid over (BLOCK_M x BLOCK_N) output tiles, as in Triton tutorial 03."""
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def _use_dot(path: str, size: int, threshold: int, op: str) -> bool:
    check(path in ("auto", "popcount", "dot"), op,
          f"path={path!r} must be 'auto', 'popcount' or 'dot'")
    return path == "dot" or (path == "auto" and size >= threshold)


def _int_mm_fits(m: int, n: int) -> bool:
    """cuBLASLt int8 GEMM's shape rules (``torch._int_mm``): M > 16, N and K multiples of 8
    (K is a whole number of 32-bit words here)."""
    return m > 16 and n % 8 == 0


def pack_signs(x: Tensor) -> Tensor:
    """Pack along the last dim: (..., K) float -> (..., ceil(K/32)) int32."""
    op = "pack_signs"
    check_float(x, "x", op)
    _check_launchable(op, x.device)
    k = x.shape[-1]
    kw = num_words(k)
    x2 = x.reshape(-1, k)
    r = x2.shape[0]
    out = torch.empty((r, kw), dtype=torch.int32, device=x.device)
    if r and kw:
        br, bw = 16, 4
        grid = (triton.cdiv(r, br), triton.cdiv(kw, bw))
        _pack_signs_kernel[grid](x2, out, r, k, kw, x2.stride(0), x2.stride(1), out.stride(0),
                                 BLOCK_R=br, BLOCK_W=bw)
    return out.reshape(*x.shape[:-1], kw)


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(..., KW) int32 -> (..., n) +-1 of ``dtype``."""
    op = "unpack_signs"
    check_packed(packed, "packed", op)
    check_words(packed, "packed", n, op)
    _check_launchable(op, packed.device)
    p2 = packed.reshape(-1, packed.shape[-1])
    r = p2.shape[0]
    out = torch.empty((r, n), dtype=dtype, device=packed.device)
    if r and n:
        kw = p2.shape[1]
        br, bw = 8, 8  # 8 rows x 256 values: 2 KiB of int8 / 8 KiB of fp32 stored per program
        grid = (triton.cdiv(r, br), triton.cdiv(kw, bw))
        _unpack_signs_kernel[grid](p2, out, r, n, kw, p2.stride(0), out.stride(0),
                                   BLOCK_R=br, BLOCK_W=bw)
    return out.reshape(*packed.shape[:-1], n)


def xnor_gemm(a_packed: Tensor, w_packed: Tensor, k: int, *, path: str = "auto") -> Tensor:
    """int32 ``a_pm @ w_pm.T`` for a (M, KW), w (N, KW) packed along K; k = true K.

    ``path``: ``"popcount"`` (words, GEMV regime), ``"dot"`` (int8 tensor cores, Triton),
    ``"int_mm"`` (unpack both to +-1 int8, cuBLASLt ``torch._int_mm``) or ``"auto"`` (popcount
    below :data:`DOT_MIN_M` rows, split across K for small N; above, ``int_mm`` on CUDA where
    its shape rules hold, else ``dot``). Every path is exact.
    """
    op = "xnor_gemm"
    dev = validate_xnor_gemm(a_packed, w_packed, k, op)
    check(a_packed.dim() == 2, op, f"a_packed must be (M, KW), got {tuple(a_packed.shape)}")
    _check_launchable(op, dev)
    m, kw = a_packed.shape
    n = w_packed.shape[0]
    if path == "int_mm" or (path == "auto" and INT_MM_AUTO and dev.type == "cuda"
                            and m >= DOT_MIN_M and _int_mm_fits(m, n)):
        check(_int_mm_fits(m, n), op, f"path='int_mm' needs M > 16 and N % 8 == 0, got M={m}, "
              f"N={n}; use path='dot'")
        return _xnor_gemm_int_mm(a_packed, w_packed, k)
    c = torch.empty((m, n), dtype=torch.int32, device=dev)
    if m == 0 or n == 0:
        return c
    use_dot = _use_dot(path, m, DOT_MIN_M, op)
    kern = _xnor_gemm_dot if use_dot else _xnor_gemm_popcount
    if use_dot:
        grid = _gemm_grid(m, n)
    else:
        def grid(meta):  # (output tiles, K splits)
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),
                    meta["SPLIT_K"])
    kern[grid](a_packed, w_packed, c, m, n, kw, k,
               a_packed.stride(0), a_packed.stride(1), w_packed.stride(0), w_packed.stride(1),
               c.stride(0), c.stride(1), c, c, USE_DOT=use_dot, HW_POPC=_hw_popc(dev))
    return c


def xnor_gemm_signs(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor,
                    flip: Tensor, *, path: str = "auto") -> Tensor:
    """The next binary layer's packed input, (M, ceil(N/32)) int32: bit n of row m is
    ``(dot[m, n] < threshold[n]) XOR flip[n]``, dot the exact ``xnor_gemm`` (a folded
    BatchNorm -> sign), computed in the GEMM's epilogue; no int32 or float output is written.

    ``path``: ``"popcount"``, ``"dot"`` (int8 tensor cores) or ``"auto"`` (popcount below
    :data:`DOT_MIN_M` rows); never split-K or cuBLASLt (the threshold needs the whole dot).
    """
    op = "xnor_gemm_signs"
    dev = validate_xnor_gemm(a_packed, w_packed, k, op)
    check(a_packed.dim() == 2, op, f"a_packed must be (M, KW), got {tuple(a_packed.shape)}")
    n = w_packed.shape[0]
    validate_sign_threshold(threshold, flip, n, op)
    _check_launchable(op, dev)
    m, kw = a_packed.shape
    out = torch.zeros((m, num_words(n)), dtype=torch.int32, device=dev)  # OR-ed into
    if m == 0:
        return out
    use_dot = _use_dot(path, m, DOT_MIN_M, op)
    kern = _xnor_signs_dot if use_dot else _xnor_signs_popcount
    kern[_gemm_grid(m, n)](a_packed, w_packed, out, m, n, kw, k, a_packed.stride(0),
                           a_packed.stride(1), w_packed.stride(0), w_packed.stride(1),
                           out.stride(0), out.stride(1), threshold.contiguous(),
                           flip.contiguous(), USE_DOT=use_dot, HW_POPC=_hw_popc(dev),
                           SIGNS_OUT=True)
    return out


def _xnor_gemm_int_mm(a_packed: Tensor, w_packed: Tensor, k: int) -> Tensor:
    """Both operands unpacked over all their words (pad bits 0 -> +1 on both sides, adding
    ``KW * 32 - k`` to every dot, taken off after) and multiplied by cuBLASLt int8."""
    kw = a_packed.shape[1]
    a8 = unpack_signs(a_packed, kw * 32, torch.int8)
    w8 = unpack_signs(w_packed, kw * 32, torch.int8)
    return torch._int_mm(a8, w8.T) - (kw * 32 - k)


def multibit_xnor_gemm(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                       scale: Tensor | None = None, bias: Tensor | None = None, *,
                       path: str = "auto") -> Tensor:
    """float32 y[m, n] = scale[n] * sum_p alpha[p, m] * xnor_dot(H_p, W)[m, n] + bias[n].

    a_planes (P, M, KW); alpha (P,) or (P, M); one launch, planes looped inside the kernel.
    """
    op = "multibit_xnor_gemm"
    dev = validate_multibit_xnor_gemm(a_planes, w_packed, alpha, k, scale, bias, op)
    _check_launchable(op, dev)
    pn, m, kw = a_planes.shape
    n = w_packed.shape[0]
    al = alpha.to(device=dev, dtype=torch.float32)
    stride_alm = 0 if al.dim() == 1 else al.stride(1)
    y = torch.empty((m, n), dtype=torch.float32, device=dev)
    if m == 0 or n == 0:
        return y
    use_dot = _use_dot(path, m, DOT_MIN_M, op)
    kern = _multibit_dot if use_dot else _multibit_popcount
    sc = scale.to(device=dev, dtype=torch.float32).contiguous() if scale is not None else y
    bi = bias.to(device=dev, dtype=torch.float32).contiguous() if bias is not None else y
    grid = _gemm_grid(m, n)
    kern[grid](a_planes, w_packed, al, sc, bi, y, pn, m, n, kw, k,
               a_planes.stride(0), a_planes.stride(1), a_planes.stride(2),
               w_packed.stride(0), w_packed.stride(1), al.stride(0), stride_alm,
               y.stride(0), y.stride(1), HAS_SCALE=scale is not None,
               HAS_BIAS=bias is not None, USE_DOT=use_dot, HW_POPC=_hw_popc(dev))
    return y


def binary_weight_gemm(x: Tensor, w_packed: Tensor, scale: Tensor | None = None,
                       bias: Tensor | None = None, *, gemv_layout: str = "auto") -> Tensor:
    """y (M, N) in x.dtype = scale[n] * (x @ w_pm.T) + bias[n]; x (M, K) fp16/bf16/fp32.

    Up to :data:`BW_GEMV_MAX_M` rows the sign-flip GEMV (fp32 sums on CUDA cores), above it
    the tensor-core kernel on +-1 halves built from the bits. ``gemv_layout``: ``"words"``
    (each thread walks the bits of its own weight words,
    :func:`_binary_weight_gemv_words_kernel`), ``"lanes"`` (a word's bits across a warp's
    lanes, :func:`_binary_weight_gemv_kernel`) or ``"auto"``: words for one row, lanes for
    2-4 rows, where the lanes layout's shared-memory fetch of a word serves every row and its
    K step has fewer instructions per product (the SASS counts in the words kernel's
    docstring; the GPU bench times both layouts at M = 1 and 4)."""
    op = "binary_weight_gemm"
    dev = validate_binary_weight_gemm(x, w_packed, scale, bias, op)
    check(x.dim() == 2, op, f"x must be (M, K), got {tuple(x.shape)}")
    _check_launchable(op, dev)
    m, k = x.shape
    n, kw = w_packed.shape
    y = torch.empty((m, n), dtype=x.dtype, device=dev)
    if m == 0 or n == 0:
        return y
    sc = scale.to(device=dev, dtype=torch.float32).contiguous() if scale is not None else y
    bi = bias.to(device=dev, dtype=torch.float32).contiguous() if bias is not None else y
    grid = _gemm_grid(m, n)
    check(gemv_layout in ("auto", "words", "lanes"), op,
          f"gemv_layout={gemv_layout!r} must be 'auto', 'words' or 'lanes'")
    if m <= BW_GEMV_MAX_M:
        words = gemv_layout == "words" or (gemv_layout == "auto" and m == 1)
        gemv = _binary_weight_gemv_words if words else _binary_weight_gemv
        gemv[grid](x, w_packed, sc, bi, y, m, n, k, kw, x.stride(0), x.stride(1),
                   w_packed.stride(0), w_packed.stride(1), y.stride(0), y.stride(1),
                   HAS_SCALE=scale is not None, HAS_BIAS=bias is not None)
        return y
    _binary_weight_gemm[grid](x, w_packed, sc, bi, y, m, n, k, kw,
                              x.stride(0), x.stride(1), w_packed.stride(0), w_packed.stride(1),
                              y.stride(0), y.stride(1), HAS_SCALE=scale is not None,
                              HAS_BIAS=bias is not None,
                              FP32_MODE=0 if x.dtype != torch.float32 else (1 if INTERPRET else 2),
                              ONE_BITS=0x3F80 if x.dtype == torch.bfloat16 else 0x3C00)
    return y


def pack_conv_input(x: Tensor, groups: int) -> Tensor:
    """NCHW float -> (N, H, W, groups, ceil(C/groups/32)) int32 channel-packed signs."""
    nb, c, h, w = x.shape
    cg = c // groups
    cw = num_words(cg)
    out = torch.empty((nb, h, w, groups, cw), dtype=torch.int32, device=x.device)
    r = nb * h * w * groups
    if r:
        br, bcw = 32, 2
        grid = (triton.cdiv(r, br), triton.cdiv(cw, bcw))
        _pack_conv_input_kernel[grid](x, out, r, h, w, groups, cg, cw, x.stride(0), x.stride(1),
                                      x.stride(2), x.stride(3), BLOCK_R=br, BLOCK_CW=bcw)
    return out


def binary_conv2d(x: Tensor, w_packed: Tensor, scale: Tensor | None = None,
                  bias: Tensor | None = None, stride: tuple[int, int] = (1, 1),
                  padding: tuple[int, int] = (0, 0), groups: int = 1,
                  in_channels: int | None = None, *, path: str = "auto") -> Tensor:
    """conv2d(sign(x), w_sign) with zero padding, per-channel scale and bias.

    x (N, C, H, W) float (x.dtype out), or packed signs (N, H, W, ceil(C/32)) int32 with
    ``in_channels = C`` and groups 1 (float32 out): the output of :func:`binary_conv2d_signs`,
    which skips the pack kernel. w_packed (OC, KH, KW, ceil(C/groups/32)).
    """
    return _conv(x, w_packed, scale, bias, stride, padding, groups, in_channels, None, None,
                 path, "binary_conv2d")


def binary_conv2d_signs(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor,
                        stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                        groups: int = 1, in_channels: int | None = None, *,
                        path: str = "auto") -> Tensor:
    """The next conv's packed input, (N, OH, OW, ceil(OC/32)) int32: bit o at (n, i, j) is
    ``(dot < threshold[o]) XOR flip[o]``, dot the exact zero-padded conv of :func:`binary_conv2d`
    (a folded BatchNorm -> sign), computed in the conv's epilogue. groups 1."""
    check(threshold is not None and flip is not None, "binary_conv2d_signs",
          "threshold and flip are required")
    return _conv(x, w_packed, None, None, stride, padding, groups, in_channels, threshold,
                 flip, path, "binary_conv2d_signs")


def _conv(x, w_packed, scale, bias, stride, padding, groups, in_channels, threshold, flip,
          path, op) -> Tensor:
    (sh, sw), (ph, pw), dev = validate_binary_conv2d(x, w_packed, scale, bias, stride, padding,
                                                     1, groups, op, in_channels)
    signs = threshold is not None
    oc, kh, kwd, cw = w_packed.shape
    if signs:
        check(groups == 1, op, f"groups={groups}: the signs epilogue packs whole channel "
              "vectors; use groups=1")
        validate_sign_threshold(threshold, flip, oc, op)
    _check_launchable(op, dev)
    packed_in = x.dtype == torch.int32
    if packed_in:
        nb, h, w, _ = x.shape
        c = in_channels
    else:
        nb, c, h, w = x.shape
    cg, ocg = c // groups, oc // groups
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kwd) // sw + 1
    if signs:  # NHWC words, OR-ed into
        y = torch.zeros((nb, oh, ow, num_words(oc)), dtype=torch.int32, device=dev)
        y_strides = (y.stride(0), y.stride(3), y.stride(1), y.stride(2))  # n, word, h, w
    else:
        odt = torch.float32 if packed_in else x.dtype
        y = torch.empty((nb, oc, oh, ow), dtype=odt, device=dev)
        y_strides = y.stride()
    if y.numel() == 0:
        return y
    xp = x.reshape(nb, h, w, 1, cw).contiguous() if packed_in else pack_conv_input(x, groups)
    wp = w_packed.contiguous()
    p = nb * oh * ow
    use_dot = _use_dot(path, p, CONV_DOT_MIN_P, op)
    kern = _conv_dot if use_dot else _conv_popcount
    sc = scale.to(device=dev, dtype=torch.float32).contiguous() if scale is not None else y
    bi = bias.to(device=dev, dtype=torch.float32).contiguous() if bias is not None else y
    t = threshold.contiguous() if signs else y
    f = flip.contiguous() if signs else y

    def grid(meta):
        return (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(ocg, meta["BLOCK_OC"]), groups)

    kern[grid](xp, wp, sc, bi, y, nb, h, w, oh, ow, cw, cg, ocg, kh, kwd, sh, sw, ph, pw,
               *xp.stride(), *wp.stride(), *y_strides, t, f,
               HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
               USE_DOT=use_dot, HW_POPC=_hw_popc(dev), SIGNS_OUT=signs)
    return y
