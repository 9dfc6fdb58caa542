"""The compiled CPU kernels' threaded and single-threaded variants, each forced and checked.

Every case runs twice, once with the single-threaded loops and once on numba's thread pool
(the threshold set to 0), records which compiled variant actually ran (so a dispatch change
cannot silently test the same path twice) and compares the integers with the float64 /
reference result exactly.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnnbench.kernels as K
import bnnbench.kernels.cpu as C
from bnnbench.kernels import cpu_jit as J
from bnnbench.kernels import reference as R

from ._util import rand_signs_source, sign

THREADED = ("xnor_popcount_gemm_parallel", "pack_nchw_signs_parallel",
            "xnor_popcount_conv2d_parallel", "conv_epilogue_parallel")
SINGLE = ("xnor_popcount_gemm_at", "pack_nchw_signs", "xnor_popcount_conv2d", "conv_epilogue")
#: the threaded variant of each single-threaded one, where it is not NAME + "_parallel"
PARALLEL_OF = {"xnor_popcount_gemm_at": "xnor_popcount_gemm_parallel"}

needs_two_threads = pytest.mark.skipif(
    __import__("numba").config.NUMBA_NUM_THREADS < 2, reason="numba's pool has one thread")


@pytest.fixture(params=["single", "threaded"])
def threads(request, monkeypatch) -> tuple[str, list[str]]:
    """Force one variant for every call; returns (variant, names of the jit functions run)."""
    if request.param == "threaded" and C.numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba's pool has one thread")
    ran: list[str] = []
    for name in THREADED + SINGLE:
        fn = getattr(J, name)

        def spy(*args, _fn=fn, _name=name):
            ran.append(_name)
            return _fn(*args)

        monkeypatch.setattr(J, name, spy)
    threaded = request.param == "threaded"
    monkeypatch.setattr(C, "KERNEL_THREADS", 2 if threaded else 1)
    monkeypatch.setattr(C, "PARALLEL_MIN_WORDS", 0 if threaded else 1 << 62)
    return request.param, ran


def _assert_ran(threads: tuple[str, list[str]], *names: str) -> None:
    variant, ran = threads
    want = [PARALLEL_OF.get(n, n + "_parallel") if variant == "threaded" else n for n in names]
    assert ran and set(ran) == set(want), (variant, ran)


# (M, N, K): M = 1 with N not a multiple of the task blocks, odd and even word counts
# (uint32 and uint64 words), N = 1, more weight rows than tasks, batch-like M.
GEMM_SHAPES = [(1, 1, 1), (1, 37, 1031), (1, 10, 640), (1, 131, 64), (3, 1, 33), (2, 40, 95),
               (33, 17, 200), (64, 70, 128), (256, 9, 33)]


@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_popcount_gemm_variants_exact(m, n, k, threads, monkeypatch):
    monkeypatch.setattr(C, "POPCOUNT_MIN_M", 1 << 30)  # always the popcount loop, any M
    a = rand_signs_source((m, k), seed=m + n)
    w = rand_signs_source((n, k), seed=k)
    pool_threads = C.numba.get_num_threads()
    got = K.xnor_gemm(R.pack_signs_ref(a), R.pack_signs_ref(w), k, backend="cpu")
    assert C.numba.get_num_threads() == pool_threads  # the call's thread count does not leak
    assert got.dtype == torch.int32
    assert torch.equal(got.double(), sign(a) @ sign(w).T)
    _assert_ran(threads, "xnor_popcount_gemm_at")


# (N, C, H, W, OC, KSIZE, stride, padding, groups): batches > 1 (rows of several images in
# one pool), a channel count over 32 (two words), stride 2, groups=2, a 1x1 kernel.
CONV_CASES = [(3, 37, 6, 5, 7, 3, 1, 1, 1), (4, 6, 7, 7, 4, 3, 2, 1, 2),
              (2, 70, 4, 4, 5, 1, 1, 0, 1), (1, 3, 9, 8, 4, 5, 2, 2, 1)]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv_variants_exact(case, threads):
    nb, c, h, w, oc, ks, s, p, g = case
    x = rand_signs_source((nb, c, h, w), seed=c)
    wt = rand_signs_source((oc, c // g, ks, ks), seed=oc)
    y = K.binary_conv2d(x, K.pack_conv_weight(wt), stride=s, padding=p, groups=g, backend="cpu")
    assert torch.equal(y.double(), F.conv2d(sign(x), sign(wt), stride=s, padding=p, groups=g))
    _assert_ran(threads, "pack_nchw_signs", "xnor_popcount_conv2d", "conv_epilogue")


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_epilogue_bitwise_torch(scaled, biased, dtype, threads):
    """The compiled epilogue equals torch's float32 ``mul_``/``add_``/``permute`` bit for bit:
    two roundings, no FMA, -0.0 kept when there is no bias (0 * negative scale), dots past
    2^24 rounded like torch's int32 -> float32, 70 pixels (a ragged last pixel block)."""
    nb, c, h, w, oc = 2, 40, 7, 10, 6
    x = rand_signs_source((nb, c, h, w), seed=5).to(dtype)
    wt = rand_signs_source((oc, c, 3, 3), seed=6)
    g = torch.Generator().manual_seed(7)
    scale = torch.randn(oc, generator=g, dtype=torch.float64).to(dtype) if scaled else None
    bias = torch.randn(oc, generator=g).to(dtype) if biased else None
    if scaled:
        scale[0] = -scale[0].abs()  # dot 0 -> -0.0 without a bias
    dots = F.conv2d(sign(x), sign(wt), padding=1).to(torch.int32).permute(0, 2, 3, 1)
    want = dots.to(torch.float32)
    if scaled:
        want.mul_(scale.to(torch.float32))
    if biased:
        want.add_(bias.to(torch.float32))
    want = want.permute(0, 3, 1, 2).to(dtype)
    y = K.binary_conv2d(x, K.pack_conv_weight(wt), scale, bias, padding=1, backend="cpu")
    assert y.dtype == dtype
    assert torch.equal(y.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
    _assert_ran(threads, "pack_nchw_signs", "xnor_popcount_conv2d", "conv_epilogue")


def test_conv_epilogue_large_dots_round_like_torch():
    """int32 dots beyond float32's 24-bit mantissa convert with torch's rounding."""
    dots = np.array([[[2**24 + 1, -(2**25) - 3, 2**31 - 1, 0]]], dtype=np.int32)  # (1, 1, 4)
    scale = np.array([1.5, -0.75, 3.0, -2.0], np.float32)
    bias = np.array([0.25, 1e-3, -7.0, 0.0], np.float32)
    out = np.empty((1, 4, 1), np.float32)
    J.conv_epilogue(dots, scale, bias, out)
    want = torch.from_numpy(dots).float().mul_(torch.from_numpy(scale)).add_(
        torch.from_numpy(bias)).permute(0, 2, 1)
    assert torch.equal(torch.from_numpy(out).view(torch.int32), want.contiguous().view(torch.int32))


@needs_two_threads
@pytest.mark.parametrize("word", [np.uint32, np.uint64])
@pytest.mark.parametrize("rows_per_task", [4, 8, 1000])
def test_gemm_word_types_and_task_blocks(word, rows_per_task):
    """Both compiled variants, called directly with 32- and 64-bit words and every task split
    (tasks of 4 and 8 rows with a ragged last one, one task for everything)."""
    m, n, kw = 1, 30, 6
    rng = np.random.default_rng(0)
    a32 = rng.integers(0, 2**32, (m, kw), dtype=np.uint64).astype(np.uint32)
    w32 = rng.integers(0, 2**32, (n, kw), dtype=np.uint64).astype(np.uint32)
    k = kw * 32
    want = R.xnor_gemm_ref(torch.from_numpy(a32.view(np.int32)),
                           torch.from_numpy(w32.view(np.int32)), k).numpy()
    a, w = a32.view(word), w32.view(word)
    single = np.empty((m, n), np.int32)
    J.xnor_popcount_gemm(a, w, k, single)
    threaded = np.full((m, n), -12345, np.int32)
    J.xnor_popcount_gemm_parallel(a, w, k, threaded, rows_per_task)
    assert np.array_equal(single, want) and np.array_equal(threaded, want)


@pytest.mark.parametrize("kw", [7, 8, 130])  # uint32 words; uint64 pairs; rows > 512 bytes
def test_gemm_by_address_with_prefetch(kw):
    """The single-threaded kernel on raw addresses (``xnor_popcount_gemm_at``), with more
    weight rows than its prefetch distance (so the prefetches past the rows read so far run),
    and the public call on non-contiguous operands (copied before their address is taken)."""
    m, n, k = 3, 4096 // kw + 50, 32 * kw - 5
    rng = np.random.default_rng(kw)
    a = torch.from_numpy(rng.integers(-2**31, 2**31, (m, kw), dtype=np.int64).astype(np.int32))
    w = torch.from_numpy(rng.integers(-2**31, 2**31, (n, kw), dtype=np.int64).astype(np.int32))
    a[:, -1] &= (1 << 27) - 1  # the pad bits past k are zero, as packing leaves them
    w[:, -1] &= (1 << 27) - 1
    want = R.xnor_gemm_ref(a, w, k)
    got = torch.full((m, n), -12345, dtype=torch.int32)
    J.xnor_popcount_gemm_at(a.data_ptr(), w.data_ptr(), got.data_ptr(), m, n, kw, k)
    assert torch.equal(got, want)
    a_strided = torch.zeros(kw, m, dtype=torch.int32).T  # same values, column-major
    a_strided.copy_(a)
    assert not a_strided.is_contiguous()
    assert torch.equal(K.xnor_gemm(a_strided, w, k, backend="cpu"), want)


@pytest.mark.parametrize("m,n,kw,threads", [(256, 4096, 128, 2), (1, 8192, 256, 2),
                                             (1, 4096, 128, 16), (3, 37, 2, 2), (0, 5, 1, 2)])
def test_gemm_task_split(m, n, kw, threads):
    """Tasks of whole 64-byte output lines (16 int32 columns), at least GEMM_MIN_TASK_WORDS
    of work each unless that leaves one task, and at most GEMM_TASKS_PER_THREAD per thread."""
    rows = C._gemm_rows_per_task(m, n, kw, threads)
    tasks = -(-n // rows)
    assert rows % 16 == 0
    assert tasks == 1 or rows * m * kw >= C.GEMM_MIN_TASK_WORDS
    assert tasks <= C.GEMM_TASKS_PER_THREAD * threads
    if m * kw * n >= 64 * C.GEMM_MIN_TASK_WORDS * threads:  # enough work: many tasks each
        assert tasks >= 16 * threads


def test_conv_scratch_reused_safely(monkeypatch):
    """The conv's dots buffer is reused across calls and per Python thread: an earlier result
    is unchanged by a later call, calls from two threads at once are each exact, and dots
    over SCRATCH_MAX_BYTES get their own array."""
    import threading

    def case(seed, c, hw, oc):
        x = rand_signs_source((2, c, hw, hw), seed=seed)
        w = rand_signs_source((oc, c, 3, 3), seed=seed + 1)
        want = F.conv2d(sign(x), sign(w), padding=1).float()
        return x, K.pack_conv_weight(w), want

    big, small = case(1, 40, 9, 24), case(2, 7, 5, 6)
    got_big = K.binary_conv2d(big[0], big[1], padding=1, backend="cpu")
    got_small = K.binary_conv2d(small[0], small[1], padding=1, backend="cpu")
    assert torch.equal(got_big, big[2]) and torch.equal(got_small, small[2])
    results: dict[int, bool] = {}

    def worker(i, xs=(big, small)):
        x, wp, want = xs[i]
        results[i] = all(torch.equal(K.binary_conv2d(x, wp, padding=1, backend="cpu"), want)
                         for _ in range(20))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True}
    monkeypatch.setattr(C, "SCRATCH_MAX_BYTES", 0)
    assert torch.equal(K.binary_conv2d(big[0], big[1], padding=1, backend="cpu"), big[2])
    assert C._scratch_int32((3, 4)).base is not getattr(C._SCRATCH, "buf", None)


def test_stream_read_sums():
    words = np.arange(1, 1001, dtype=np.uint64)
    assert J.stream_read(words) == J.stream_read_parallel(words) == 500500


def test_kernel_threads_policy(monkeypatch):
    """Default: torch's thread count (capped by numba's pool); an int overrides it."""
    pool = C.numba.config.NUMBA_NUM_THREADS
    monkeypatch.setattr(C, "KERNEL_THREADS", None)
    monkeypatch.setattr(C.torch, "get_num_threads", lambda: 1)
    assert C.kernel_threads() == 1
    monkeypatch.setattr(C.torch, "get_num_threads", lambda: 64)
    assert C.kernel_threads() == pool
    monkeypatch.setattr(C, "KERNEL_THREADS", 1)
    assert C.kernel_threads() == 1
    monkeypatch.setattr(C, "PARALLEL_MIN_WORDS", 100)
    monkeypatch.setattr(C, "KERNEL_THREADS", 2)
    assert C._parallel_threads(99) == 1
    assert C._parallel_threads(100) == min(2, pool)
    assert C.numba.get_parallel_chunksize() == 0  # the dynamic chunking does not leak


def test_threading_layer_is_known():
    assert C.threading_layer() in ("tbb", "omp", "workqueue")


def _fork_case() -> tuple[tuple, tuple]:
    """Small GEMM and conv operands and their float64 results (computed in the parent)."""
    a, w = rand_signs_source((5, 300), seed=1), rand_signs_source((23, 300), seed=2)
    x, wt = rand_signs_source((2, 40, 5, 5), seed=3), rand_signs_source((6, 40, 3, 3), seed=4)
    want_gemm = sign(a) @ sign(w).T
    want_conv = F.conv2d(sign(x), sign(wt), padding=1)
    return (a, w, x, wt), (want_gemm, want_conv)


def _child_runs_threaded_kernels(queue, operands, wanted) -> None:
    """In a forked child: the threaded GEMM and conv against the parent's float64 results.

    Only our kernels run here: a torch matmul in a child forked from a process whose torch
    already ran OpenMP regions hangs in GNU libgomp (torch's limitation, not numba's).
    """
    C.KERNEL_THREADS, C.PARALLEL_MIN_WORDS = 2, 0
    a, w, x, wt = operands
    want_gemm, want_conv = wanted
    got = K.xnor_gemm(K.pack_signs(a), K.pack_signs(w), 300, backend="cpu")
    ok = torch.equal(got.double(), want_gemm)
    y = K.binary_conv2d(x, K.pack_conv_weight(wt), padding=1, backend="cpu")
    ok = ok and torch.equal(y.double(), want_conv)
    queue.put((ok, C.threading_layer()))


@needs_two_threads
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_threaded_kernels_in_forked_child(monkeypatch):
    """The parent starts numba's pool first, then forks (a DataLoader worker, a DDP launcher):
    the child's kernels must still run and stay exact (numba terminates a child that enters a
    GNU OpenMP region its parent started: there the child runs the single-threaded variants)."""
    monkeypatch.setattr(C, "KERNEL_THREADS", 2)
    monkeypatch.setattr(C, "PARALLEL_MIN_WORDS", 0)
    layer = C.threading_layer()
    operands, wanted = _fork_case()
    a = operands[0]
    K.xnor_gemm(K.pack_signs(a), K.pack_signs(a), 300, backend="cpu")  # pool running in parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_runs_threaded_kernels, args=(queue, operands, wanted))
    child.start()
    child.join(timeout=120)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0, f"forked child failed (exit {child.exitcode}, layer {layer})"
    ok, child_layer = queue.get(timeout=10)
    assert ok and child_layer == layer
