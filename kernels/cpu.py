"""Fast CPU implementations (numba + numpy + torch, no Triton) of the packed kernels.

Used when the tensors are on CPU and ``backend`` is ``"auto"`` or ``"cpu"``. Strategies,
chosen by the shapes (thresholds below, measured on a 2-core AVX-512 EPYC; see
``reports/kernels.md``):

* **popcount** (both operands binary, few rows: :func:`use_popcount`): one fused compiled loop,
  :func:`bnnbench.kernels.cpu_jit.xnor_popcount_gemm`, dot = k - 2 * popcount(a XOR w) with a
  hardware popcount on 64-bit words (32-bit when the word count is odd); it reads the 1-bit
  weights once and keeps the sums in registers.
* **int8 matmul** (both binary, many rows): unpack to int8 +-1 and ``torch._int_mm`` (VNNI
  on AVX-512 CPUs), the CPU analogue of the int8 tensor-core path. Unpacking the weights
  costs O(N K) per call, which is why few rows go to the popcount loop instead.
* **direct popcount conv** (every conv): :func:`bnnbench.kernels.cpu_jit.xnor_popcount_conv2d`
  on NHWC channel-packed signs; padded taps are skipped, so zero padding is exact. When it
  replaced int8 im2col + ``_int_mm`` it measured 1.5-3x faster on the bench's conv shapes
  (ResNet-18 3x3 at 56/28/14 px, AlexNet's grouped conv).
* **byte lookup table, compiled** (binary weights x float activations, M <= ``BW_JIT_MAX_M``):
  :func:`bnnbench.kernels.cpu_jit.sign_lut_gemm`: the 256 signed partial sums of every group
  of 8 inputs are tabulated and each weight byte is one lookup.
* **lookup table, torch** (binary weights, M <= ``BW_LUT_MAX_M``): the same idea batched over
  rows: for every group of g inputs (g = 8 bits for M <= ``LUT_BYTE_MAX_M``, else 4),
  ``lut[grp, b, m] = sum_j (1 - 2 bit_j(b)) x[m, g grp + j]`` and each weight group is one
  ``embedding_bag`` lookup: ``y[m, n] = sum_grp lut[grp, group(w[n], grp), m]``. Above
  ``BW_LUT_MAX_M`` rows: unpack the weights to +-1 floats and use a float matmul (bf16 for
  bf16 activations).

* **multiple binarization** (:func:`multibit_xnor_gemm`, Tang et al.): all P planes' rows in
  one popcount loop, or one int8 matmul (many rows: :data:`MULTIBIT_INT8_MIN_ROWS`) after a
  compiled unpacking (:func:`bnnbench.kernels.cpu_jit.unpack_pm1_int8`), then one compiled
  pass sums the planes with their alphas (:func:`bnnbench.kernels.cpu_jit.multibit_epilogue`);
  :func:`residual_sign_planes` makes the packed planes themselves.

* **sign packing** (:func:`pack_signs`): compiled too
  (:func:`bnnbench.kernels.cpu_jit.pack_rows_signs_at`), one pass over float32 rows.

Threads: the compiled popcount GEMM and the packed conv (with its sign packing and its float
epilogue) run on numba's thread pool (:func:`kernel_threads` threads: torch's thread count by
default) when a call has at least :data:`PARALLEL_MIN_WORDS` word popcounts of work, and on the
calling thread below that, where waking the pool costs more than it saves. Each thread owns
whole output rows (pixel blocks in the epilogue), so the threaded results equal the
single-threaded ones bit for bit. The work around the compiled loops is kept small, since it
runs on one thread and, for a cold GEMV, costs as much as the loop: numpy rather than torch
ops (a cold torch op costs ~20-80 us to dispatch on the bench machine), the single-threaded
GEMM and the row packing take ``data_ptr()`` addresses instead of numpy views
(:func:`bnnbench.kernels.cpu_jit.xnor_popcount_gemm_at`: ``Tensor.numpy()`` costs ~40-70 us
cold), and eager calls reach this module without the custom op
(:func:`bnnbench.kernels.ops._direct_cpu`). The threaded GEMM hands out many small tasks
(:func:`_gemm_rows_per_task`), so a thread that loses its core delays little of the call.

All functions take canonical shapes (packing along the last dim, 2-D GEMM operands); the
public wrappers in :mod:`bnnbench.kernels.ops` do the reshaping. Every public function here
that hands memory to compiled code (which reads it unchecked) first runs the op's shared
validator (:mod:`bnnbench.kernels._common`: shapes, dtypes, word counts, padding bits, CPU
tensors), the one :mod:`bnnbench.kernels.ops` runs; an eager op call, having validated, calls
the unchecked bodies (:data:`UNCHECKED`) so that it is validated once.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from types import SimpleNamespace

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_jit
from ._common import (
    WORD_BITS,
    check,
    num_words,
    resolve_backend,
    validate_binary_conv2d,
    validate_binary_weight_gemm,
    validate_multibit_xnor_gemm,
    validate_pack_signs,
    validate_sign_threshold,
    validate_xnor_gemm,
)

if sys.byteorder != "little":  # pragma: no cover - every supported CPU is little endian
    raise ImportError("bnnbench.kernels.cpu assumes a little-endian host (int32 words as bytes)")

#: both-binary GEMM: the popcount loop for M <= max(this, N / POPCOUNT_ROWS_PER_M).
POPCOUNT_MIN_M = 32
#: ... its cost grows with M N K / 32, the int8 path's fixed cost (unpacking) with N K.
POPCOUNT_ROWS_PER_M = 16
#: binary-weight GEMM: compiled byte table for M <= this (it re-reads the weights per row).
BW_JIT_MAX_M = 2
#: binary-weight GEMM: torch lookup table for M <= this, unpack + float matmul above.
BW_LUT_MAX_M = 256
#: lookup table with byte groups up to this many rows, nibble groups above.
LUT_BYTE_MAX_M = 8
#: rows per lookup-table pass (bounds the table: 16 * K * rows bytes for nibbles).
LUT_ROW_CHUNK = 64

#: threaded kernels from this many 32-bit word popcounts per call (M N KW for the GEMM,
#: N OH OW OC KH KW CW for the conv); below it one thread. 2^20 is ~0.3-0.5 ms of one-thread
#: work on the 2-core bench machine: waking numba's pool costs ~10-30 us, and when the other
#: core is busy (torch's OpenMP workers still spinning after a torch op, or another process)
#: a second thread can cost far more than it saves (warm GEMV M=1 N=K=4096, 2^19 words:
#: 0.54 ms on one thread, 2.5 ms on two at load average 7). Tiny shapes stay single-threaded.
PARALLEL_MIN_WORDS = 1 << 20
#: threads for the compiled kernels. None (default): torch's thread count
#: (``torch.get_num_threads()``, so ``torch.set_num_threads`` and Lightning's per-rank split
#: under DDP govern both), capped by numba's pool (``NUMBA_NUM_THREADS``, all cores by default).
#: An int overrides torch's count (still capped by the pool); 1 forces the single-threaded
#: loops. The bench and the tests set it.
KERNEL_THREADS: int | None = None

# pm_table[b, j] = +1 if bit j of byte b is 0 else -1  (LSB first).
_PM_TABLE = (1.0 - 2.0 * ((torch.arange(256)[:, None] >> torch.arange(8)) & 1)).to(torch.float32)
_OFFSETS: dict[tuple[int, int], Tensor] = {}


def _byte_offsets(groups: int, entries: int) -> Tensor:
    """Row offset of each group in the stacked lookup table: arange(groups) * entries."""
    off = _OFFSETS.get((groups, entries))
    if off is None:
        off = _OFFSETS[(groups, entries)] = torch.arange(groups, dtype=torch.int32) * entries
    return off


# ---------------------------------------------------------------------------------------------
# pack / unpack
# ---------------------------------------------------------------------------------------------
def _pack_signs(x: Tensor) -> Tensor:
    """Pack along the last dim: (..., K) float -> (..., ceil(K/32)) int32 (bit 1 = x < 0).

    One compiled pass over float32 rows (:func:`bnnbench.kernels.cpu_jit.pack_rows_signs`;
    float16/bfloat16 widen to float32 exactly, signs, -0.0 and NaN included).
    """
    k = x.shape[-1]
    if x.requires_grad:
        x = x.detach()
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    if not x.is_contiguous():
        x = x.contiguous()
    words = num_words(k)
    out = torch.from_numpy(np.empty((*x.shape[:-1], words), np.int32))  # cold: < torch.empty
    # by address, no numpy view of x: see cpu_jit.pack_rows_signs_at (x stays alive meanwhile)
    cpu_jit.pack_rows_signs_at(x.data_ptr(), out.data_ptr(), x.numel() // k, k, 4 * words)
    return out


def pack_bools(neg: Tensor) -> Tensor:
    """(..., K) bool (True = -1) -> (..., ceil(K/32)) int32 words, LSB first, zero padded."""
    k = neg.shape[-1]
    nbytes = num_words(k) * 4
    by = np.packbits(neg.contiguous().numpy(), axis=-1, bitorder="little")
    if by.shape[-1] != nbytes:
        full = np.zeros(by.shape[:-1] + (nbytes,), dtype=np.uint8)
        full[..., : by.shape[-1]] = by
        by = full
    return torch.from_numpy(np.ascontiguousarray(by)).view(torch.int32)


def unpack_bits(packed: Tensor, n: int) -> np.ndarray:
    """(..., KW) int32 -> (..., n) uint8 bits in {0, 1} (numpy)."""
    by = packed.contiguous().numpy().view(np.uint8)
    return np.unpackbits(by, axis=-1, count=n, bitorder="little")


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(..., KW) int32 -> (..., n) values in {-1, +1} of ``dtype``."""
    bits = torch.from_numpy(unpack_bits(packed, n))
    if dtype == torch.int8:
        return (1 - 2 * bits.view(torch.int8)).to(torch.int8)
    return bits.to(dtype).mul_(-2).add_(1)


def int8_matmul(a: Tensor, b_t: Tensor) -> Tensor:
    """a (M, K) int8 @ b_t (N, K).T int8 -> (M, N) int32, exact."""
    try:
        return torch._int_mm(a, b_t.T)
    except (RuntimeError, AttributeError):  # pragma: no cover - builds without CPU _int_mm
        return (a.to(torch.float64) @ b_t.to(torch.float64).T).to(torch.int32)


# ---------------------------------------------------------------------------------------------
# GEMMs
# ---------------------------------------------------------------------------------------------
def kernel_threads() -> int:
    """Threads the compiled kernels may use (see :data:`KERNEL_THREADS`)."""
    wanted = torch.get_num_threads() if KERNEL_THREADS is None else KERNEL_THREADS
    return max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))


def threading_layer() -> str:
    """Numba's threading layer (``tbb``, ``omp`` or ``workqueue``), starting it if needed.

    Numba picks it when the first parallel kernel runs (TBB first when installed: it is the
    one that is both fork-safe and thread-safe; GNU OpenMP is not fork-safe; workqueue is not
    thread-safe); ``NUMBA_THREADING_LAYER`` overrides the choice.
    """
    try:
        return numba.threading_layer()
    except ValueError:  # not started yet: one tiny threaded call starts it
        out = np.empty((1, 4), np.int32)
        cpu_jit.xnor_popcount_gemm_parallel(np.zeros((1, 1), np.uint32),
                                            np.zeros((4, 1), np.uint32), 32, out, 4)
        return numba.threading_layer()


#: the process that imported this module: a different pid is a forked child
_IMPORT_PID = os.getpid()


def forked_after_openmp() -> bool:
    """Whether this is a forked child of a process whose numba pool runs on OpenMP.

    GNU OpenMP is not fork-safe: numba terminates a child that enters a parallel region after
    its parent started the OpenMP pool ("fork() called from a process already using GNU
    OpenMP"). Without TBB numba picks OpenMP, so such a child (a DataLoader worker, a DDP
    launcher's fork) runs the single-threaded variants, which give the same results bit for bit.
    """
    if os.getpid() == _IMPORT_PID:
        return False
    try:
        return numba.threading_layer() == "omp"
    except ValueError:  # the parent never started the pool: the child may start its own
        return False


def _parallel_threads(work_words: int) -> int:
    """Threads for a call with ``work_words`` word popcounts: 1 (the single-threaded variant)
    below :data:`PARALLEL_MIN_WORDS` or in a child forked after OpenMP started
    (:func:`forked_after_openmp`), else :func:`kernel_threads`."""
    if work_words < PARALLEL_MIN_WORDS or forked_after_openmp():
        return 1
    return kernel_threads()


def _run_threaded(kernel, threads: int, *args):
    """Call a ``*_parallel`` kernel on ``threads`` threads with dynamic scheduling.

    Chunk size 1 hands the ``prange`` tasks (blocks of rows, many per thread) out one at a
    time instead of one equal slice per thread: on a shared machine a thread that loses its
    core for a while then delays only its current task, not half of the call. Numba's thread
    count and chunk size are per calling thread; both are restored. (Plain setter calls, and
    the thread count only when it changes: the ``parallel_chunksize`` context manager and an
    unconditional ``set_num_threads`` cost ~85 us per cold call. Setting both inside the
    compiled kernels would cost nothing but keeps numba from caching them on disk: they
    reach the pool through ctypes pointers.)
    """
    saved = numba.get_num_threads()
    if saved != threads:
        numba.set_num_threads(threads)
    chunk = numba.set_parallel_chunksize(1)
    try:
        return kernel(*args)
    finally:
        numba.set_parallel_chunksize(chunk)
        if saved != threads:
            numba.set_num_threads(saved)


def use_popcount(m: int, n: int) -> bool:
    """True when the popcount loop beats unpack + int8 matmul for an (M x K) @ (N x K).T."""
    return m <= max(POPCOUNT_MIN_M, n // POPCOUNT_ROWS_PER_M)


def _words(packed: Tensor) -> np.ndarray:
    """A C-contiguous numpy view of packed int32 words (a copy only when not contiguous).

    numpy's ``ascontiguousarray`` instead of torch's ``contiguous()``: a cold call (weights
    and code evicted, as in a model too large for the caches) pays for every torch op it
    dispatches, ~20-80 us each on the bench machine, while this is one C call.
    """
    return np.ascontiguousarray(packed.numpy())


#: the threaded popcount GEMM splits its weight rows into ~this many tasks per thread ...
GEMM_TASKS_PER_THREAD = 32
#: ... of at least this many word popcounts each (a task costs ~1-5 us to hand out).
GEMM_MIN_TASK_WORDS = 1 << 15


def _gemm_rows_per_task(m: int, n: int, kw: int, threads: int) -> int:
    """Weight rows per ``prange`` task of the threaded popcount GEMM: a multiple of 16 (the
    tasks' int32 output columns then fill whole 64-byte lines, so no two threads write one
    line), ~:data:`GEMM_TASKS_PER_THREAD` tasks per thread, none under
    :data:`GEMM_MIN_TASK_WORDS`. Many small tasks handed out one at a time: when a thread
    loses its core for a while (the bench machine is shared) or finishes first, the other
    takes the remaining tasks, so at most one small task is left unbalanced at the end (8
    tasks per thread left up to 1/16 of an M=256 N=K=4096 call to one thread).
    """
    rows = max(-(-n // (GEMM_TASKS_PER_THREAD * threads)),
               -(-GEMM_MIN_TASK_WORDS // max(1, m * kw)))
    return -(-rows // 16) * 16


def _popcount_gemm(a_packed: Tensor, w_packed: Tensor, k: int) -> Tensor:
    """dot = k - 2 * popcount(a ^ w): one compiled pass over the packed weights.

    An even word count is read as 64-bit words (half the popcounts and loads; the zero
    padding bits of both operands XOR to 0 either way).
    """
    (m, kw), n = a_packed.shape, w_packed.shape[0]
    threads = _parallel_threads(m * n * kw)
    if threads == 1:  # by address: no numpy view to make (see cpu_jit.xnor_popcount_gemm_at)
        a_packed = a_packed if a_packed.is_contiguous() else a_packed.contiguous()
        w_packed = w_packed if w_packed.is_contiguous() else w_packed.contiguous()
        out1 = torch.from_numpy(np.empty((m, n), np.int32))  # cold: cheaper than torch.empty
        cpu_jit.xnor_popcount_gemm_at(a_packed.data_ptr(), w_packed.data_ptr(), out1.data_ptr(),
                                      m, n, kw, k)
        return out1
    word = np.uint64 if kw % 2 == 0 else np.uint32
    a = _words(a_packed).view(word)
    w = _words(w_packed).view(word)
    out = np.empty((m, n), dtype=np.int32)
    _run_threaded(cpu_jit.xnor_popcount_gemm_parallel, threads, a, w, k, out,
                  _gemm_rows_per_task(m, n, kw, threads))
    return torch.from_numpy(out)


_PM_NIBBLE = _PM_TABLE[:16, :4].contiguous()  # (16, 4): the same table for 4-bit groups


def lut_matmul(x: Tensor, w_packed: Tensor, group_bits: int | None = None) -> Tensor:
    """y = x @ w_sign.T via a lookup table; x (M, KW*32) float32 (zeros past K), w (N, KW).

    With g-bit groups (g = 8: bytes, g = 4: nibbles) and pm[b, j] = 1 - 2 bit_j(b):
    ``lut[grp, b, m] = sum_j pm[b, j] x[m, g grp + j]`` and
    ``y[m, n] = sum_grp lut[grp, group(w[n], grp), m]``, one ``embedding_bag`` lookup per
    group (no weight unpacking). Bytes for small M (fewer lookups), nibbles for larger M (a
    16x smaller table that stays in cache).
    """
    m = x.shape[0]
    n, kw = w_packed.shape
    if m == 0:
        return x.new_zeros(0, n)
    if group_bits is None:
        group_bits = 8 if m <= LUT_BYTE_MAX_M else 4
    wb = w_packed.contiguous().numpy().view(np.uint8)  # (N, 4 KW) weight bytes, LSB-first bits
    nbytes = wb.shape[1]
    if group_bits == 8:
        groups, table = nbytes, _PM_TABLE
        idx = np.empty(wb.shape, dtype=np.int32)
        np.add(wb, _byte_offsets(groups, 256).numpy(), out=idx, dtype=np.int32)
    else:
        groups, table = 2 * nbytes, _PM_NIBBLE
        idx = np.empty((n, nbytes, 2), dtype=np.int32)
        off = _byte_offsets(groups, 16).numpy().reshape(nbytes, 2)
        np.add(wb & 15, off[:, 0], out=idx[:, :, 0], dtype=np.int32)
        np.add(wb >> 4, off[:, 1], out=idx[:, :, 1], dtype=np.int32)
        idx = idx.reshape(n, groups)
    idx_t = torch.from_numpy(idx)
    entries = table.shape[0]
    out = []
    for r0 in range(0, m, LUT_ROW_CHUNK):  # bounded table size; the indices are reused
        xc = x[r0:r0 + LUT_ROW_CHUNK]
        mc = xc.shape[0]
        # (E, g) @ (groups, g, Mc) -> (groups, E, Mc), contiguous: unit-stride (groups*E, Mc)
        lut = torch.matmul(table, xc.reshape(mc, groups, group_bits).permute(1, 2, 0))
        out.append(F.embedding_bag(idx_t, lut.view(groups * entries, mc), mode="sum").T)
    return out[0] if len(out) == 1 else torch.cat(out)


def _scale_bias_(y: Tensor, scale: Tensor | None, bias: Tensor | None) -> Tensor:
    """In place on a fresh float32 ``y`` whose last dim is the output channel:
    ``y * scale + bias`` (each optional)."""
    if scale is not None:
        y.mul_(scale.to(torch.float32))
    if bias is not None:
        y.add_(bias.to(torch.float32))
    return y


def _pad_cols(x: Tensor, width: int) -> Tensor:
    if x.shape[1] == width:
        return x
    return F.pad(x, (0, width - x.shape[1]))


def _xnor_gemm(a_packed: Tensor, w_packed: Tensor, k: int) -> Tensor:
    """Exact int32 dot products of +-1 matrices packed along K (a: M x KW, w: N x KW)."""
    m, kw = a_packed.shape
    if use_popcount(m, w_packed.shape[0]):
        return _popcount_gemm(a_packed, w_packed, k)
    a8 = _unpack_pm1_int8(a_packed)
    w8 = _unpack_pm1_int8(w_packed)
    return int8_matmul(a8, w8).sub_(kw * WORD_BITS - k)


def threshold_signs(dots: Tensor, threshold: Tensor, flip: Tensor) -> Tensor:
    """A folded BatchNorm -> sign on exact int32 dots (..., N): the packed next-layer input,
    bit n = ``(dots[..., n] < threshold[n]) XOR flip[n]``."""
    return pack_bools((dots < threshold) ^ (flip & 1).bool())


def _xnor_gemm_signs(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor,
                    flip: Tensor) -> Tensor:
    """:func:`xnor_gemm` then :func:`threshold_signs`: (M, ceil(N/32)) int32."""
    return threshold_signs(_xnor_gemm(a_packed, w_packed, k), threshold, flip)


def _binary_weight_gemm(x: Tensor, w_packed: Tensor, scale: Tensor | None,
                       bias: Tensor | None) -> Tensor:
    """y = scale * (x @ w_sign.T) + bias for float x (M, K); returns x.dtype."""
    m, k = x.shape
    kw = w_packed.shape[1]
    if m <= BW_JIT_MAX_M:
        xp = _pad_cols(x.to(torch.float32), kw * WORD_BITS).contiguous().numpy()
        out = np.empty((m, w_packed.shape[0]), dtype=np.float32)
        cpu_jit.sign_lut_gemm(xp, w_packed.contiguous().numpy().view(np.uint8), out)
        y = torch.from_numpy(out)
    elif m <= BW_LUT_MAX_M:
        y = lut_matmul(_pad_cols(x.to(torch.float32), kw * WORD_BITS), w_packed)
    else:
        cd = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        w = unpack_signs(w_packed, k, cd)
        y = (x.to(cd) @ w.T).to(torch.float32)
    return _scale_bias_(y, scale, bias).to(x.dtype)


#: multibit GEMM: unpack to int8 + ``torch._int_mm`` (VNNI) from this many plane rows (P M),
#: the popcount loop below. The int8 path pays a fixed unpacking of the weights (~4 ms at
#: N = K = 4096) and a smaller per-row cost than the popcount loop (``vpshufb`` popcounts:
#: the bench machine, a 2-core Cascade Lake, has VNNI but no ``vpopcntq``). N = K = 4096,
#: two planes, best of 10 interleaved at load ~1.4: 256 rows 16.2 vs 15.7 ms (int8 vs
#: popcount), 384 rows 20.7 vs 25.9, 512 rows 25.4 vs 34.3. Noisy: ``_int_mm`` runs on torch's
#: OpenMP threads, which lose more than numba's dynamically scheduled loop on a busy machine.
MULTIBIT_INT8_MIN_ROWS = 320
#: ... and from this many output channels (N = 1024, 512 rows: 24.0 vs 15.2 ms; 2048: 41.5 vs
#: 46.2 at load 2.3, 32.5 vs 29.3 at load 2.2; a classifier head stays on the popcount loop).
MULTIBIT_INT8_MIN_N = 2048
#: torch's ``bmm`` (which ``einsum`` ran) sums the planes with fused multiply-adds (BLAS) from
#: this many multiply-adds per row (P N), with a product-then-sum loop below it; the compiled
#: epilogue rounds the same way, so the results are bit for bit those of the einsum it replaced.
BMM_FMA_MIN_MACS = 400


def _unpack_pm1_int8(packed: Tensor) -> Tensor:
    """(R, KW) int32 words -> (R, 32 KW) int8 +-1 over all bits (zero padding bits become +1),
    compiled (:func:`bnnbench.kernels.cpu_jit.unpack_pm1_int8`), on one thread (a ``prange``
    variant measured ~5 ms faster at N = K = 4096, 512 rows, but was dropped while chasing
    segfaults that then went away with the stale numba cache files; not re-measured since)."""
    src = _words(packed).view(np.uint8)
    out = np.empty(src.shape, dtype=np.uint64)
    cpu_jit.unpack_pm1_int8(src, out)
    return torch.from_numpy(out.view(np.int8))


def _multibit_xnor_gemm(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                       scale: Tensor | None, bias: Tensor | None) -> Tensor:
    """y = scale * sum_i alpha[i, m] * xnor_dot(H_i, W) + bias; all planes in one GEMM call.

    The P M plane rows are one operand: the int32 dots come from one popcount loop over the
    packed weights (few rows) or from one int8 matmul after a compiled unpacking (many rows,
    :data:`MULTIBIT_INT8_MIN_ROWS`); one compiled pass (:func:`bnnbench.kernels.cpu_jit.
    multibit_epilogue`, one thread) then sums the planes with their alphas and
    applies scale and bias, rounding as the torch ops it replaced did
    (:data:`BMM_FMA_MIN_MACS`).
    """
    p, m, kw = a_planes.shape
    n = w_packed.shape[0]
    rows = a_planes.reshape(p * m, kw)
    pad = 0
    if p * m >= MULTIBIT_INT8_MIN_ROWS and n >= MULTIBIT_INT8_MIN_N:
        dots = int8_matmul(_unpack_pm1_int8(rows), _unpack_pm1_int8(w_packed))
        pad = kw * WORD_BITS - k  # the padding bits, +1 in both operands
    else:
        dots = _popcount_gemm(rows, w_packed, k)
    out = np.empty((m, n), dtype=np.float32)
    args = (dots.numpy().reshape(p, m, n), pad,
            np.ascontiguousarray(alpha.detach().to(torch.float32).numpy()),
            _channel_vec(scale), _channel_vec(bias), p * n >= BMM_FMA_MIN_MACS, out)
    cpu_jit.multibit_epilogue(*args)  # one thread: measured faster than two here
    return torch.from_numpy(out)


def _residual_sign_planes(x: Tensor, num_planes: int,
                         per_sample: bool) -> tuple[Tensor, Tensor]:
    """Tang et al.'s residual binarization of float32 ``x`` (B, ..., K), C-contiguous, with the
    planes packed: ``(planes (P, rows, ceil(K/32)) int32, alphas)``, ``rows`` = x.numel() / K.

    ``E_1 = x``; ``H_i = sign(E_i)`` (sign(0) = +1); ``alpha_i = mean|E_i|`` over every dim but
    the first (``per_sample``: ``alphas`` (P, B)) or over all (``alphas`` (P,));
    ``E_{i+1} = x - sum_{j<=i} alpha_j H_j``. Bit for bit ``bnnbench.functional.
    residual_planes`` followed by ``pack_signs``: one compiled pass per plane
    (:func:`bnnbench.kernels.cpu_jit.residual_sign_step`) makes |E_i| and the packed H_i (no
    +-1 float planes), and the mean is torch's, on a tensor equal to its ``E_i.abs()``.
    """
    k = x.shape[-1]
    rows_x = x.detach().numpy().reshape(-1, k)
    rows, nbytes = rows_x.shape[0], 4 * num_words(k)
    dims = tuple(range(1, x.dim())) if per_sample else tuple(range(x.dim()))
    rows_per_sample = rows // max(x.shape[0], 1) if per_sample else rows
    approx = np.zeros_like(rows_x)
    abs_err = np.empty_like(rows_x)
    bits = np.zeros((num_planes, rows, nbytes), dtype=np.uint8)
    row_alpha = np.zeros(rows, dtype=np.float32)
    alphas = []
    for i in range(num_planes):  # one thread: memory-bound, and measured slower on two
        cpu_jit.residual_sign_step(rows_x, approx, bits[i - 1] if i else bits[0], row_alpha,
                                   i == 0, abs_err, bits[i])
        a = torch.from_numpy(abs_err).view(x.shape).mean(dim=dims, keepdim=per_sample)
        alphas.append(a.reshape(-1) if per_sample else a)
        if i + 1 < num_planes:
            row_alpha[:] = np.repeat(a.reshape(-1).numpy(), rows_per_sample) if per_sample \
                else a.item()
    planes = torch.from_numpy(bits.view(np.int32))
    return planes, torch.stack(alphas)


#: the conv's int32 dots (never returned) go to a buffer kept for the calling thread's next
#: call when at most this many bytes (larger ones are allocated per call).
SCRATCH_MAX_BYTES = 64 * 2**20
_SCRATCH = threading.local()  # one buffer per Python thread: concurrent calls never share it


def _scratch_int32(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised int32 array for a conv's dots: the calling thread's kept buffer (grown
    when too small) up to :data:`SCRATCH_MAX_BYTES`, else a fresh one.

    Why: a fresh 25 MiB array per call (N=256 C=OC=128 HW=14) was returned to the OS by malloc
    and faulted back in by the next call: ~1,800 page faults and ~20 ms of kernel time per
    call on the bench machine (17% of a one-thread call, spent outside the threaded loops);
    reused, 0 faults and 0.1 ms. The same idea as oneDNN's scratchpad.
    """
    size = 1
    for d in shape:
        size *= d
    if 4 * size > SCRATCH_MAX_BYTES:
        return np.empty(shape, np.int32)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < size:
        buf = _SCRATCH.buf = np.empty(size, np.int32)
    return buf[:size].reshape(shape)


def _conv_dots(x: Tensor, w_packed: Tensor, stride: tuple[int, int], padding: tuple[int, int],
               groups: int, in_channels: int | None) -> tuple[np.ndarray, int]:
    """Exact zero-padded conv dots (N, OH, OW, OC) int32 of float NCHW x or of packed NHWC
    signs (N, H, W, ceil(C/32)) int32 (groups 1, ``in_channels`` = C): the compiled direct conv,
    and the threads it ran on (for the epilogue).

    The input signs are packed along each group's channels (NHWC words, one pass over the
    NCHW floats; a packed input skips this) and the weights laid out output-channel-innermost,
    (G, KH, KW, words, OC/G), for :func:`bnnbench.kernels.cpu_jit.xnor_popcount_conv2d`.
    The dots live in the thread's scratch buffer (:func:`_scratch_int32`): read them before
    this thread's next conv call, never return them.
    """
    packed_in = x.dtype == torch.int32
    if packed_in:
        n, h, w, _ = x.shape
        c = int(in_channels)
    else:
        n, c, h, w = x.shape
    oc, kh, kwid, words = w_packed.shape
    ocg = oc // groups
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - kwid) // stride[1] + 1
    threads = _parallel_threads(n * oh * ow * oc * kh * kwid * words)
    w_bits = (w_packed.view(groups, ocg, kh, kwid, words).permute(0, 2, 3, 4, 1).contiguous()
              .numpy().view(np.uint32))
    dots = _scratch_int32((n, oh, ow, oc))
    args = (c // groups, stride[0], stride[1], padding[0], padding[1], dots)
    if packed_in:
        x_bits = x.contiguous().numpy().view(np.uint32).reshape(n, h, w, 1, words)
    else:
        x32 = x.detach().to(torch.float32).contiguous().numpy()
        x_bits = (_run_threaded(cpu_jit.pack_nchw_signs_parallel, threads, x32, groups)
                  if threads > 1 else cpu_jit.pack_nchw_signs(x32, groups))
    if threads > 1:
        _run_threaded(cpu_jit.xnor_popcount_conv2d_parallel, threads, x_bits, w_bits, *args)
    else:
        cpu_jit.xnor_popcount_conv2d(x_bits, w_bits, *args)
    return dots, threads


_NO_VEC = np.empty(0, np.float32)  # conv_epilogue's "no scale" / "no bias"


def _channel_vec(v: Tensor | None) -> np.ndarray:
    return _NO_VEC if v is None else np.ascontiguousarray(v.detach().to(torch.float32).numpy())


def _binary_conv2d(x: Tensor, w_packed: Tensor, scale: Tensor | None, bias: Tensor | None,
                  stride: tuple[int, int], padding: tuple[int, int], groups: int,
                  in_channels: int | None = None) -> Tensor:
    """conv2d(sign(x), w_sign) * scale + bias with zero padding (:func:`_conv_dots`), then
    the compiled epilogue (:func:`bnnbench.kernels.cpu_jit.conv_epilogue`: float32 NCHW,
    scale and bias, bit-identical to torch's ``mul_``/``add_``/``permute``) on as many threads
    as the conv. x.dtype out (float32 for packed x). Torch's epilogue (three passes, on torch's
    threads) was ~10% of a one-thread conv and did not run on the kernel threads; fusing it
    into the popcount loop measured slower than this contiguous int32 store and second pass.
    """
    dots, threads = _conv_dots(x, w_packed, stride, padding, groups, in_channels)
    n, oh, ow, oc = dots.shape
    out = np.empty((n, oc, oh, ow), dtype=np.float32)
    args = (dots.reshape(n, oh * ow, oc), _channel_vec(scale), _channel_vec(bias),
            out.reshape(n, oc, oh * ow))
    if threads > 1:
        _run_threaded(cpu_jit.conv_epilogue_parallel, threads, *args)
    else:
        cpu_jit.conv_epilogue(*args)
    y = torch.from_numpy(out)
    odt = x.dtype if x.is_floating_point() else torch.float32
    return y if odt == torch.float32 else y.to(odt)


def _binary_conv2d_signs(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor,
                        stride: tuple[int, int], padding: tuple[int, int], groups: int,
                        in_channels: int | None = None) -> Tensor:
    """The next conv's packed input (N, OH, OW, ceil(OC/32)) int32 from the exact dots
    (:func:`threshold_signs`): no float output is made."""
    dots, _ = _conv_dots(x, w_packed, stride, padding, groups, in_channels)
    return threshold_signs(torch.from_numpy(dots), threshold, flip)


# ---------------------------------------------------------------------------------------------
# public entry points: the shared validators first, then the compiled bodies
# ---------------------------------------------------------------------------------------------
def _cpu(device: torch.device, op: str) -> None:
    resolve_backend("cpu", device, op)  # CPU tensors only: one line otherwise


def pack_signs(x: Tensor) -> Tensor:
    """Pack along the last dim: (..., K) float -> (..., ceil(K/32)) int32 (bit 1 = x < 0),
    validated (:func:`bnnbench.kernels._common.validate_pack_signs`); see :func:`_pack_signs`."""
    op = "cpu.pack_signs"
    validate_pack_signs(x, -1, op)
    _cpu(x.device, op)
    return _pack_signs(x)


def xnor_gemm(a_packed: Tensor, w_packed: Tensor, k: int) -> Tensor:
    """Exact int32 dot products of +-1 matrices packed along K (a: M x KW, w: N x KW),
    validated (:func:`bnnbench.kernels._common.validate_xnor_gemm`, a 2-D)."""
    op = "cpu.xnor_gemm"
    _cpu(validate_xnor_gemm(a_packed, w_packed, k, op), op)
    check(a_packed.dim() == 2, op, f"a_packed must be (M, KW), got {tuple(a_packed.shape)}")
    return _xnor_gemm(a_packed, w_packed, k)


def xnor_gemm_signs(a_packed: Tensor, w_packed: Tensor, k: int, threshold: Tensor,
                    flip: Tensor) -> Tensor:
    """:func:`xnor_gemm` then :func:`threshold_signs`: (M, ceil(N/32)) int32, validated."""
    op = "cpu.xnor_gemm_signs"
    _cpu(validate_xnor_gemm(a_packed, w_packed, k, op), op)
    check(a_packed.dim() == 2, op, f"a_packed must be (M, KW), got {tuple(a_packed.shape)}")
    validate_sign_threshold(threshold, flip, w_packed.shape[0], op)
    _cpu(threshold.device, op)
    return _xnor_gemm_signs(a_packed, w_packed, k, threshold, flip)


def binary_weight_gemm(x: Tensor, w_packed: Tensor, scale: Tensor | None,
                       bias: Tensor | None) -> Tensor:
    """y = scale * (x @ w_sign.T) + bias for float x (M, K), validated
    (:func:`bnnbench.kernels._common.validate_binary_weight_gemm`, x 2-D)."""
    op = "cpu.binary_weight_gemm"
    _cpu(validate_binary_weight_gemm(x, w_packed, scale, bias, op), op)
    check(x.dim() == 2, op, f"x must be (M, K), got {tuple(x.shape)}")
    return _binary_weight_gemm(x, w_packed, scale, bias)


def multibit_xnor_gemm(a_planes: Tensor, w_packed: Tensor, alpha: Tensor, k: int,
                       scale: Tensor | None, bias: Tensor | None) -> Tensor:
    """sum_i alpha[i, m] xnor_dot(H_i, W) (* scale + bias), validated
    (:func:`bnnbench.kernels._common.validate_multibit_xnor_gemm`, alpha (P, M))."""
    op = "cpu.multibit_xnor_gemm"
    _cpu(validate_multibit_xnor_gemm(a_planes, w_packed, alpha, k, scale, bias, op), op)
    check(alpha.dim() == 2, op, f"alpha must be (P, M), got {tuple(alpha.shape)}")
    return _multibit_xnor_gemm(a_planes, w_packed, alpha, k, scale, bias)


def residual_sign_planes(x: Tensor, num_planes: int,
                         per_sample: bool) -> tuple[Tensor, Tensor]:
    """Tang et al.'s residual binarization, packed (:func:`_residual_sign_planes`), for a
    float32 CPU ``x`` with a batch dim; validated."""
    op = "cpu.residual_sign_planes"
    validate_pack_signs(x, -1, op)
    _cpu(x.device, op)
    check(x.dtype == torch.float32 and x.dim() >= 2, op,
          f"x must be float32 (B, ..., K), got {x.dtype} {tuple(x.shape)}")
    check(isinstance(num_planes, int) and 1 <= num_planes <= 32, op,
          f"num_planes must be an int in 1..32, got {num_planes!r:.40}")
    check(isinstance(per_sample, bool), op, f"per_sample must be a bool, got {per_sample!r:.40}")
    return _residual_sign_planes(x.contiguous(), num_planes, per_sample)


def binary_conv2d(x: Tensor, w_packed: Tensor, scale: Tensor | None, bias: Tensor | None,
                  stride: int | Sequence[int], padding: int | Sequence[int], groups: int,
                  in_channels: int | None = None) -> Tensor:
    """Zero-padded conv2d(sign(x), w_sign) * scale + bias (:func:`_binary_conv2d`), validated
    (:func:`bnnbench.kernels._common.validate_binary_conv2d`)."""
    op = "cpu.binary_conv2d"
    st, pd, dev = validate_binary_conv2d(x, w_packed, scale, bias, stride, padding, 1, groups,
                                         op, in_channels)
    _cpu(dev, op)
    return _binary_conv2d(x, w_packed, scale, bias, st, pd, groups, in_channels)


def binary_conv2d_signs(x: Tensor, w_packed: Tensor, threshold: Tensor, flip: Tensor,
                        stride: int | Sequence[int], padding: int | Sequence[int], groups: int,
                        in_channels: int | None = None) -> Tensor:
    """The next conv's packed input (:func:`_binary_conv2d_signs`), validated."""
    op = "cpu.binary_conv2d_signs"
    st, pd, dev = validate_binary_conv2d(x, w_packed, None, None, stride, padding, 1, groups,
                                         op, in_channels)
    _cpu(dev, op)
    check(groups == 1, op, f"groups={groups}: the fused signs output needs groups=1")
    validate_sign_threshold(threshold, flip, w_packed.shape[0], op)
    _cpu(threshold.device, op)
    return _binary_conv2d_signs(x, w_packed, threshold, flip, st, pd, groups, in_channels)


#: the bodies an eager :mod:`bnnbench.kernels.ops` call runs after the same validators (by op
#: name; the arguments as the custom ops take them)
UNCHECKED = SimpleNamespace(
    pack_signs=_pack_signs, unpack_signs=unpack_signs, xnor_gemm=_xnor_gemm,
    binary_weight_gemm=_binary_weight_gemm, multibit_xnor_gemm=_multibit_xnor_gemm,
    binary_conv2d=_binary_conv2d, xnor_gemm_signs=_xnor_gemm_signs,
    binary_conv2d_signs=_binary_conv2d_signs)
