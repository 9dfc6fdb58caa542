"""Numba-compiled CPU loops for the packed kernels (used by :mod:`bnnbench.kernels.cpu`).

Why compiled loops: the XNOR-popcount dot product must read each 1-bit weight once and keep
the partial sums in registers. Numpy spells it as ``xor -> bitwise_count -> sum``, three
passes that write and re-read temporaries as large as the packed weights, which is what held
the packed GEMV to ~2.7x over fp32 with cold caches. One fused loop with a hardware popcount
(LLVM ``ctpop``, vectorised to ``vpopcnt`` where the CPU has it, to ``vpshufb`` + ``vpsadbw``
elsewhere) reads the weights once.

All functions take contiguous numpy arrays in canonical shapes and write into ``out`` (the
``*_at`` variants take ``Tensor.data_ptr()`` addresses and shapes instead: no numpy view to
make per call); they are compiled on first use and cached on disk (``cache=True``).

Threads: the popcount GEMM, the packed conv, its sign packing and its float epilogue each come
in two compiled variants built from one loop body, a single-threaded one and a ``*_parallel``
one (``parallel=True``, ``prange`` over independent output rows, so every thread writes its own
rows and the results are the same as the single-threaded ones, bit for bit).
:mod:`bnnbench.kernels.cpu` picks the threaded variant only above a work threshold: a
parallel region costs tens of microseconds to wake the pool, and right after a torch op
torch's own OpenMP workers are still spinning on the other cores, so small calls stay on one
thread. Numba's threading layer is its default choice (TBB when installed, which is fork- and
thread-safe; then OpenMP; then workqueue); see :func:`threading_layer`.
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = dict(cache=True, nogil=True, boundscheck=False, fastmath=True)
#: the threaded variants: same flags plus parfors (``prange`` runs on numba's thread pool).
_PJIT = dict(_JIT, parallel=True)


@intrinsic
def _popcount(typingctx, word):
    """Hardware population count of a uint32 or uint64 word, as an int64 (LLVM ``ctpop``).

    Returned as int64 so that sums of it stay integers: numba types ``int64 + uint64`` as
    float64.
    """
    if not isinstance(word, types.Integer) or word.bitwidth not in (32, 64):
        return None
    sig = types.int64(word)

    def codegen(context, builder, signature, args):
        ones = builder.ctpop(args[0])
        if word.bitwidth < 64:
            ones = builder.zext(ones, context.get_value_type(types.int64))
        return ones

    return sig, codegen


@intrinsic
def _prefetch_row(typingctx, array, row, col):
    """Hint the CPU to fetch ``array[row, col]``'s cache line for reading (LLVM
    ``llvm.prefetch``, read, high locality): no effect on results, never faults."""
    if not (isinstance(array, types.Array) and array.ndim == 2):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary,
                                       [args[1], args[2]], wraparound=False)
        byte_ptr = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [byte_ptr, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, types.intp, types.intp), codegen


#: the popcount GEMM prefetches the weight row this many bytes ahead of the one it reads.
#: The loop alone, caches flushed, median of 31: GEMV M=1 N=K=4096 288 -> 243 us (a streaming
#: read of the same 2 MiB: 231 us), N=K=8192 1117 -> 967 us; warm 127 us either way at 4096,
#: 972 -> 682 us at 8192; M=16 unchanged (2-8 KiB ahead alike, 16 KiB slower). The hardware
#: prefetcher alone leaves DRAM idle between the rows' popcounts and stops at 4 KiB pages.
PREFETCH_BYTES = 4096


def _pointer_to(item: types.Type):
    """An intrinsic ``f(address) -> item*``: an integer address (``Tensor.data_ptr()``) as a
    typed pointer, for :func:`numba.carray`. The ``*_at`` kernels take addresses instead of
    numpy arrays because a cold call (caches flushed, as for a model whose weights do not stay
    cached) pays ~40-70 us for each ``Tensor.numpy()`` / ``torch.from_numpy`` it makes, as
    much as a third of the whole GEMV at N = K = 4096; an int argument costs nothing."""
    pointer = types.CPointer(item)

    @intrinsic
    def cast(typingctx, address):
        if not isinstance(address, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address), codegen

    return cast


_uint32_at = _pointer_to(types.uint32)
_uint64_at = _pointer_to(types.uint64)
_int32_at = _pointer_to(types.int32)
_uint8_at = _pointer_to(types.uint8)
_float32_at = _pointer_to(types.float32)


@njit(**_JIT)
def _xnor_popcount_rows(a: np.ndarray, w: np.ndarray, k: int, out: np.ndarray, n0: int,
                        n1: int) -> None:
    """Weight rows ``n0 <= n < n1`` of :func:`xnor_popcount_gemm` (the shared loop body).

    The weight row ``w[n]`` is the outer loop so that it is read from memory once and reused
    from L1 by every activation row; the inner loop over words is one vectorised reduction
    (LLVM keeps several vector accumulators itself). Interleaving four weight rows by hand
    measured 1.8x slower warm and slower cold on the 2-core bench machine: the four-row body
    no longer vectorised as well.
    """
    m_rows, kw = a.shape
    ahead = max(1, PREFETCH_BYTES // max(1, kw * w.itemsize))  # rows
    line = max(1, 64 // w.itemsize)  # words per 64-byte cache line
    last = w.shape[0]  # past n1 too: the next task's rows, most likely the next ones read
    for n in range(n0, n1):
        if n + ahead < last:
            t = 0
            while t < kw:  # not range(0, kw, line): its trip count costs a division per row
                _prefetch_row(w, n + ahead, t)
                t += line
        for m in range(m_rows):
            ones = 0
            for t in range(kw):
                ones += _popcount(a[m, t] ^ w[n, t])
            out[m, n] = k - 2 * ones


@njit(**_JIT)
def xnor_popcount_gemm(a: np.ndarray, w: np.ndarray, k: int, out: np.ndarray) -> None:
    """``out[m, n] = k - 2 * sum_t popcount(a[m, t] ^ w[n, t])``, one thread.

    a (M, KW), w (N, KW): the same unsigned word type, uint32 or uint64 (64-bit words halve
    the popcount instructions; :mod:`bnnbench.kernels.cpu` passes them when KW is even);
    out (M, N) int32.
    """
    _xnor_popcount_rows(a, w, k, out, 0, w.shape[0])


@njit(**_JIT)
def xnor_popcount_gemm_at(a_address: int, w_address: int, out_address: int, m_rows: int,
                          n_rows: int, words: int, k: int) -> None:
    """:func:`xnor_popcount_gemm` on C-contiguous buffers given by address (``data_ptr()``):
    a (M, words) and w (N, words) int32 words, read as uint64 pairs when ``words`` is even;
    out (M, N) int32. The caller keeps the buffers alive and checks shapes and dtypes."""
    out = carray(_int32_at(out_address), (m_rows, n_rows))
    if words % 2 == 0:
        a64 = carray(_uint64_at(a_address), (m_rows, words // 2))
        w64 = carray(_uint64_at(w_address), (n_rows, words // 2))
        _xnor_popcount_rows(a64, w64, k, out, 0, n_rows)
    else:
        a32 = carray(_uint32_at(a_address), (m_rows, words))
        w32 = carray(_uint32_at(w_address), (n_rows, words))
        _xnor_popcount_rows(a32, w32, k, out, 0, n_rows)


@njit(**_PJIT)
def xnor_popcount_gemm_parallel(a: np.ndarray, w: np.ndarray, k: int, out: np.ndarray,
                                rows_per_task: int) -> None:
    """:func:`xnor_popcount_gemm` on numba's thread pool: blocks of ``rows_per_task`` weight
    rows, one block per ``prange`` iteration (each thread writes whole output columns)."""
    n_rows = w.shape[0]
    tasks = (n_rows + rows_per_task - 1) // rows_per_task
    for b in prange(tasks):
        n0 = b * rows_per_task
        _xnor_popcount_rows(a, w, k, out, n0, min(n0 + rows_per_task, n_rows))


#: ``(v * _BYTE_GATHER) >> 56`` moves bit 0 of byte j of a uint64 ``v`` to bit j: every
#: partial product lands on its own bit (no carries), those of the 8 diagonal terms on 56 + j.
_BYTE_GATHER = np.uint64(0x0102040810204080)


@njit(cache=True, nogil=True, boundscheck=False)  # no fastmath: x < 0 must stay IEEE (NaN, -0.0)
def pack_rows_signs(x: np.ndarray, out: np.ndarray) -> None:
    """Signs of each float32 row packed LSB first: bit ``i % 8`` of ``out[r, i // 8]`` is
    ``x[r, i] < 0`` (so -0.0 and NaN pack as +1), the bytes past the row zero.

    x (R, K) float32; out (R, B) uint8 with ``8 B >= K`` (B = 4 ceil(K / 32): the int32 words
    as bytes, little endian). Two passes per row through a small L1 buffer: one vectorised
    comparison writes a 0/1 byte per value, then one multiply gathers each 8 bytes into a
    byte. ~4x faster than ``x < 0`` followed by ``np.packbits`` (256 x 4096 through the
    public call: 0.28 vs 1.2 ms, best of 35, one thread) and no bool tensor as large as x.
    """
    k = x.shape[1]
    nbytes = out.shape[1]
    neg = np.zeros(8 * nbytes, np.uint8)  # the bytes past k stay 0: zero padding bits
    neg64 = neg.view(np.uint64)
    for r in range(x.shape[0]):
        row = x[r]
        for i in range(k):
            neg[i] = row[i] < 0
        for j in range(nbytes):
            out[r, j] = np.uint8((neg64[j] * _BYTE_GATHER) >> np.uint64(56))


@njit(cache=True, nogil=True, boundscheck=False)  # no fastmath, as pack_rows_signs
def pack_rows_signs_at(x_address: int, out_address: int, rows: int, k: int,
                       nbytes: int) -> None:
    """:func:`pack_rows_signs` on C-contiguous buffers given by address (``data_ptr()``):
    x (rows, k) float32, out (rows, nbytes) bytes (see :func:`xnor_popcount_gemm_at`)."""
    pack_rows_signs(carray(_float32_at(x_address), (rows, k)),
                    carray(_uint8_at(out_address), (rows, nbytes)))


@njit(**_JIT)
def _byte_sign_tables(x: np.ndarray) -> np.ndarray:
    """``lut[m, g, b] = sum_{j<8} (1 - 2 bit_j(b)) x[m, 8 g + j]`` for every byte value b.

    Built incrementally: ``lut[.., 0]`` is the plain sum of the group, and setting bit j of
    b subtracts ``2 x[8 g + j]`` (256 entries per group for 8 + 255 additions).
    """
    m_rows, kp = x.shape
    groups = kp // 8
    lut = np.empty((m_rows, groups, 256), np.float32)
    for m in range(m_rows):
        for g in range(groups):
            total = np.float32(0.0)
            for j in range(8):
                total += x[m, 8 * g + j]
            lut[m, g, 0] = total
            for j in range(8):
                half = 1 << j
                twice = np.float32(2.0) * x[m, 8 * g + j]
                for b in range(half, 2 * half):
                    lut[m, g, b] = lut[m, g, b - half] - twice
    return lut


@njit(**_JIT)
def sign_lut_gemm(x: np.ndarray, w_bytes: np.ndarray, out: np.ndarray) -> None:
    """``out[m, n] = sum_k x[m, k] * (1 - 2 bit_k(w[n]))`` via byte lookup tables.

    x (M, 8 G) float32, zero past the true K; w_bytes (N, G) uint8 (the packed words as
    bytes, LSB first). Every weight byte is one table lookup: ``out[m, n] = sum_g
    lut[m, g, w[n, g]]``, so the 1-bit weights are read once and never unpacked. Eight output
    rows are summed at a time into eight independent registers: one running sum would be
    bound by the latency of its float additions, not by the lookups.
    """
    lut = _byte_sign_tables(x)
    n_rows, groups = w_bytes.shape
    n_main = n_rows - n_rows % 8
    for m in range(x.shape[0]):
        tab = lut[m]
        for n in range(0, n_main, 8):
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
            for g in range(groups):
                s0 += tab[g, w_bytes[n, g]]
                s1 += tab[g, w_bytes[n + 1, g]]
                s2 += tab[g, w_bytes[n + 2, g]]
                s3 += tab[g, w_bytes[n + 3, g]]
                s4 += tab[g, w_bytes[n + 4, g]]
                s5 += tab[g, w_bytes[n + 5, g]]
                s6 += tab[g, w_bytes[n + 6, g]]
                s7 += tab[g, w_bytes[n + 7, g]]
            out[m, n] = s0
            out[m, n + 1] = s1
            out[m, n + 2] = s2
            out[m, n + 3] = s3
            out[m, n + 4] = s4
            out[m, n + 5] = s5
            out[m, n + 6] = s6
            out[m, n + 7] = s7
        for n in range(n_main, n_rows):
            s = np.float32(0.0)
            for g in range(groups):
                s += tab[g, w_bytes[n, g]]
            out[m, n] = s


@njit(**_JIT)
def _pack_signs_plane(x: np.ndarray, groups: int, item: int, out: np.ndarray) -> None:
    """Word ``t`` of group ``g`` of image ``n`` for every pixel, ``item = (n G + g) W + t``
    (the shared body of :func:`pack_nchw_signs` and its parallel variant)."""
    batch, channels, height, width = x.shape
    words = out.shape[4]
    group_channels = channels // groups
    t = item % words
    g = (item // words) % groups
    n = item // (words * groups)
    first = g * group_channels + 32 * t
    bits = min(32, group_channels - 32 * t)
    row = np.empty(width, np.uint32)
    for h in range(height):
        row[:] = 0
        for b in range(bits):  # contiguous rows of one channel: vectorised
            line = x[n, first + b, h]
            for w in range(width):
                row[w] |= np.uint32(line[w] < 0) << np.uint32(b)
        for w in range(width):
            out[n, h, w, g, t] = row[w]


@njit(**_JIT)
def pack_nchw_signs(x: np.ndarray, groups: int) -> np.ndarray:
    """Signs of a float32 NCHW tensor packed along each group's channels, NHWC-ordered.

    Returns (N, H, W, G, ceil(Cg / 32)) uint32 with bit ``c % 32`` of word ``c // 32`` set
    when ``x[n, g Cg + c, h, w] < 0`` (so sign(0) = +1), padding bits zero: the layout
    :func:`xnor_popcount_conv2d` reads, made in one pass with no NHWC copy of the floats.
    """
    batch, channels, height, width = x.shape
    words = (channels // groups + 31) // 32
    out = np.empty((batch, height, width, groups, words), np.uint32)
    for item in range(batch * groups * words):
        _pack_signs_plane(x, groups, item, out)
    return out


@njit(**_PJIT)
def pack_nchw_signs_parallel(x: np.ndarray, groups: int) -> np.ndarray:
    """:func:`pack_nchw_signs` on numba's thread pool, one (image, group, word) per task."""
    batch, channels, height, width = x.shape
    words = (channels // groups + 31) // 32
    out = np.empty((batch, height, width, groups, words), np.uint32)
    for item in prange(batch * groups * words):
        _pack_signs_plane(x, groups, item, out)
    return out


@njit(**_JIT)
def _conv_output_row(x: np.ndarray, w: np.ndarray, channels: int, stride_h: int,
                     stride_w: int, pad_h: int, pad_w: int, out: np.ndarray, item: int) -> None:
    """Output row ``i`` of image ``n``, ``item = n OH + i``: the shared body of
    :func:`xnor_popcount_conv2d` and its parallel variant (each call owns its accumulator)."""
    batch, height, width, groups, words = x.shape
    kernel_h, kernel_w = w.shape[1], w.shape[2]
    out_channels = w.shape[4]
    out_h, out_w = out.shape[1], out.shape[2]
    n = item // out_h
    i = item % out_h
    acc = np.empty(out_channels, np.int32)
    for j in range(out_w):
        for g in range(groups):
            acc[:] = 0
            taps = 0
            for kh in range(kernel_h):
                ih = i * stride_h - pad_h + kh
                if ih < 0 or ih >= height:
                    continue
                for kw in range(kernel_w):
                    iw = j * stride_w - pad_w + kw
                    if iw < 0 or iw >= width:
                        continue
                    taps += 1
                    for t in range(words):
                        a = x[n, ih, iw, g, t]
                        for o in range(out_channels):
                            acc[o] += _popcount(a ^ w[g, kh, kw, t, o])
            base = g * out_channels
            for o in range(out_channels):
                out[n, i, j, base + o] = taps * channels - 2 * acc[o]


@njit(**_JIT)
def xnor_popcount_conv2d(x: np.ndarray, w: np.ndarray, channels: int, stride_h: int,
                         stride_w: int, pad_h: int, pad_w: int, out: np.ndarray) -> None:
    """Direct packed conv2d with exact zero padding: integer dot products, NHWC, one thread.

    x (N, H, W, G, CW) uint32 from :func:`pack_nchw_signs` (Cg = ``channels`` per group);
    w (G, KH, KW, CW, OCg) uint32: the weight signs, output channels innermost so that the
    loop over them is one vector popcount per input word; out (N, OH, OW, OC) int32::

        out[n, i, j, g OCg + o] = sum over taps (kh, kw) inside the input of
                                  Cg - 2 * sum_t popcount(x[n, ih, iw, g, t] ^ w[g, kh, kw, t, o])

    with ``ih = i s_h - p_h + kh``: a padded tap is skipped, i.e. contributes 0, the value a
    network trained with zero padding on +-1 inputs sees there (not -1, not +1). Writing the
    NCHW floats here (scale and bias fused) measured slower than this contiguous int32 store
    followed by a second pass (:func:`conv_epilogue`).
    """
    for item in range(out.shape[0] * out.shape[1]):
        _conv_output_row(x, w, channels, stride_h, stride_w, pad_h, pad_w, out, item)


@njit(**_PJIT)
def xnor_popcount_conv2d_parallel(x: np.ndarray, w: np.ndarray, channels: int, stride_h: int,
                                  stride_w: int, pad_h: int, pad_w: int,
                                  out: np.ndarray) -> None:
    """:func:`xnor_popcount_conv2d` on numba's thread pool, one output row (n, i) per task."""
    for item in prange(out.shape[0] * out.shape[1]):
        _conv_output_row(x, w, channels, stride_h, stride_w, pad_h, pad_w, out, item)


#: output pixels per epilogue task: a (pixels, OC) int32 block of the dots stays in L1.
EPILOGUE_PIXELS = 32
_EXACT = dict(cache=True, nogil=True, boundscheck=False)  # no fastmath: torch's float32 rounding


@njit(**_EXACT)
def _conv_epilogue_block(dots: np.ndarray, scale: np.ndarray, bias: np.ndarray, out: np.ndarray,
                         item: int) -> None:
    """Pixels ``[p0, p0 + EPILOGUE_PIXELS)`` of image n, ``item = n blocks + p0 / PIXELS``
    (the shared body of :func:`conv_epilogue` and its parallel variant)."""
    batch, pixels, channels = dots.shape
    blocks = (pixels + EPILOGUE_PIXELS - 1) // EPILOGUE_PIXELS
    n = item // blocks
    p0 = (item % blocks) * EPILOGUE_PIXELS
    p1 = min(p0 + EPILOGUE_PIXELS, pixels)
    has_scale, has_bias = scale.shape[0] > 0, bias.shape[0] > 0
    for o in range(channels):
        s = scale[o] if has_scale else np.float32(1.0)
        b = bias[o] if has_bias else np.float32(0.0)
        for p in range(p0, p1):
            y = np.float32(dots[n, p, o])
            if has_scale:
                y = y * s
            if has_bias:
                y = y + b
            out[n, o, p] = y


@njit(**_EXACT)
def conv_epilogue(dots: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                  out: np.ndarray) -> None:
    """``out[n, o, p] = float32(dots[n, p, o]) * scale[o] + bias[o]``, one thread: the conv's
    int32 NHWC dots (N, OH OW, OC) to float32 NCHW (N, OC, OH OW) in one pass.

    scale, bias float32 (OC,), or empty to skip the multiply / the add (skipping is not the
    same as 1 / 0 bit for bit: -0.0 + 0.0 is +0.0). Two float32 roundings, no FMA (this
    function is compiled without fastmath), so the result equals torch's
    ``dots.float().mul_(scale).add_(bias).permute(0, 3, 1, 2)`` bit for bit. The transpose
    goes through blocks of :data:`EPILOGUE_PIXELS` pixels that stay in L1.
    """
    blocks = (dots.shape[1] + EPILOGUE_PIXELS - 1) // EPILOGUE_PIXELS
    for item in range(dots.shape[0] * blocks):
        _conv_epilogue_block(dots, scale, bias, out, item)


@njit(**dict(_EXACT, parallel=True))
def conv_epilogue_parallel(dots: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                           out: np.ndarray) -> None:
    """:func:`conv_epilogue` on numba's thread pool, one pixel block per task."""
    blocks = (dots.shape[1] + EPILOGUE_PIXELS - 1) // EPILOGUE_PIXELS
    for item in prange(dots.shape[0] * blocks):
        _conv_epilogue_block(dots, scale, bias, out, item)


@njit(**_JIT)
def stream_read(words: np.ndarray) -> np.uint64:
    """Sum of a 1-D uint64 array, one thread: a plain streaming read (the bench's DRAM
    roofline for the cold GEMV; an add per word costs far less than the load)."""
    total = np.uint64(0)
    for i in range(words.shape[0]):
        total += words[i]
    return total


@njit(**_PJIT)
def stream_read_parallel(words: np.ndarray) -> np.uint64:
    """:func:`stream_read` on numba's thread pool (every core streaming its own slice)."""
    total = np.uint64(0)
    for i in prange(words.shape[0]):
        total += words[i]
    return total


# ---------------------------------------------------------------------------------------------
# multiple binarization (Tang et al.): int8 unpacking and the float combination of the planes
# ---------------------------------------------------------------------------------------------
@intrinsic
def _fma32(typingctx, a, b, c):
    """``a * b + c`` in float32 rounded once (LLVM ``fma``: the FMA instruction where the CPU
    has one, an exact software fallback elsewhere)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


def _pm1_byte_table() -> np.ndarray:
    """``table[b]``: 8 int8 bytes as a uint64, byte j = -1 (0xFF) if bit j of b is set else +1."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return np.ascontiguousarray((1 - 2 * bits).astype(np.int8)).view(np.uint64).reshape(256)


_PM1_BYTES = _pm1_byte_table()


@njit(**_JIT)
def unpack_pm1_int8(src: np.ndarray, out: np.ndarray) -> None:
    """Packed sign bytes to int8 +-1, one thread: ``out`` (R, B) uint64 is the (R, 8 B) int8
    result viewed 8 bytes at a time, ``int8 byte 8 j + i = 1 - 2 bit_i(src[r, j])`` (zero
    padding bits become +1). One table load and one 8-byte store per packed byte, where
    ``np.unpackbits`` followed by ``1 - 2 bits`` makes three passes over the int8 size."""
    table = _PM1_BYTES
    for r in range(src.shape[0]):
        for j in range(src.shape[1]):
            out[r, j] = table[src[r, j]]


@njit(**_EXACT)
def multibit_epilogue(dots: np.ndarray, pad: int, alpha: np.ndarray, scale: np.ndarray,
                      bias: np.ndarray, fused: bool, out: np.ndarray) -> None:
    """``out[m, n] = (sum_p alpha[p, m] * (dots[p, m, n] - pad)) * scale[n] + bias[n]``, float32,
    one thread.

    dots (P, M, N) int32 (``pad``: the zero padding bits the int8 path counted as +1 * +1,
    0 from the popcount path); alpha (P, M) float32; scale, bias float32 (N,) or empty (no
    multiply / no add). The sum runs over the planes in order from 0.0, each term added with
    one rounding (``fused``: a fused multiply-add) or two (product, then sum); then one
    rounding for the scale and one for the bias (compiled without fastmath, so nothing else
    is fused or reordered).
    """
    planes, _, n_cols = dots.shape
    has_scale, has_bias = scale.shape[0] > 0, bias.shape[0] > 0
    for m in range(out.shape[0]):
        row = out[m]
        row[:] = np.float32(0.0)
        for p in range(planes):  # planes in order, each a vector pass over the row
            a = alpha[p, m]
            plane = dots[p, m]
            if fused:
                for n in range(n_cols):
                    row[n] = _fma32(a, np.float32(plane[n] - pad), row[n])
            else:
                for n in range(n_cols):
                    row[n] = row[n] + a * np.float32(plane[n] - pad)
        if has_scale:
            for n in range(n_cols):
                row[n] = row[n] * scale[n]
        if has_bias:
            for n in range(n_cols):
                row[n] = row[n] + bias[n]


@njit(**_EXACT)
def residual_sign_step(x: np.ndarray, approx: np.ndarray, prev_bits: np.ndarray,
                       prev_alpha: np.ndarray, first: bool, abs_err: np.ndarray,
                       bits: np.ndarray) -> None:
    """One step of Tang et al.'s residual binarization on float32 rows, one thread.

    Unless ``first``: ``approx += prev_alpha[r] * H_prev`` (H_prev = +-1 from ``prev_bits``,
    the previous plane); then ``E = x - approx``, ``abs_err = |E|`` and the packed signs of
    ``H = sign(E)`` (sign(0) = +1) into ``bits`` (R, 4 KW) uint8 (LSB first, padding 0).
    x, approx, abs_err (R, K) float32 (approx starts at 0.0); prev_alpha (R,) float32.
    Compiled without fastmath: ``alpha * (+-1)`` is exact, and each subtraction and addition
    is rounded once, as the torch ops of ``bnnbench.functional.residual_planes`` round them.
    The caller takes ``alpha = mean(abs_err)`` with torch (its summation order). One thread:
    the pass is memory-bound, and two measured slower on the bench machine.
    """
    k = x.shape[1]
    nbytes = bits.shape[1]
    neg = np.zeros(8 * nbytes, np.uint8)  # the bytes past k stay 0: zero padding bits
    neg64 = neg.view(np.uint64)
    for r in range(x.shape[0]):
        if not first:  # approx += alpha_{i-1} H_{i-1}, H from the previous plane's bits
            a = prev_alpha[r]
            for i in range(k):
                h = -a if (prev_bits[r, i >> 3] >> (i & 7)) & 1 else a
                approx[r, i] = approx[r, i] + h
        for i in range(k):
            e = x[r, i] - approx[r, i]
            abs_err[r, i] = abs(e)
            neg[i] = not e >= 0  # H = sign(E), sign(0) = +1; NaN -> -1 as torch.where does
        for j in range(nbytes):
            bits[r, j] = np.uint8((neg64[j] * _BYTE_GATHER) >> np.uint64(56))
