"""Benchmark the packed kernels and write ``reports/kernels.md``.

Usage::

    python -m bnnbench.bench.kernels                 # full run, writes reports/kernels.md
    python -m bnnbench.bench.kernels --quick --out /tmp/k.md   # smoke run

CPU rows always run (``backend="cpu"`` vs torch fp32 on the same shapes, medians over
interleaved repeats). GPU rows run when CUDA is available (Triton kernels vs torch bf16, timed
with ``triton.testing.do_bench_cudagraph``, weights rotated through more copies than fit in L2
so that GEMV rows measure HBM traffic); otherwise they are written as pending. Every number in
the report comes from this script; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import torch.nn.functional as F

from bnnbench import kernels as K
from bnnbench.bench import cpu_model
from bnnbench.files import write_atomic

PENDING = "pending (no GPU in this session)"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "reports" / "kernels.md"

# nominal HBM bandwidth (GB/s) of common parts, for the "fraction of HBM" column
NOMINAL_BW = {"H100 80GB HBM3": 3350, "H100 SXM": 3350, "H100 PCIe": 2000, "H100 NVL": 3900,
              "H200": 4800, "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935,
              "L40S": 864, "RTX 4090": 1008}


CPU_TARGET = ("xnor GEMV (both binary)", "M=1 N=K=4096", 5.0)


def cpu_target_line(rows: list[list[str]]) -> str:
    """The issue's CPU goal, read from the measured rows: packed GEMV >= 5x torch fp32."""
    case, shape, goal = CPU_TARGET
    for row in rows:
        if row[0] == case and row[1] == shape:
            cold, warm = float(row[5].rstrip("x")), float(row[8].rstrip("x"))
            verdict = "met" if min(cold, warm) >= goal else "NOT met"
            return (f"**CPU target** ({case}, {shape}, >= {goal:g}x torch fp32): "
                    f"{cold:.2f}x cold, {warm:.2f}x warm: {verdict}.")
    return f"**CPU target** ({case}, {shape}): not in this plan."


# =============================================================================================
# machine description
# =============================================================================================
def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = ["avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx512_bf16",
                        "amx_int8"]
                return " ".join(f for f in keep if f in flags)
    except OSError:
        pass
    return "?"


def cache_sizes() -> str:
    """L1d/L2/L3 sizes of cpu0 from sysfs, e.g. 'L1d 48K, L2 1024K, L3 32768K'."""
    out = []
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            out.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return ", ".join(out) or "?"


def autogroup() -> str:
    """Whether Linux schedules CPU time per session group (``sched_autogroup_enabled``).

    With it on, a process's threads share one session's fair share: while other sessions keep
    the cores busy, a second kernel thread gets this process no more CPU time, so a 1 -> 2
    thread speedup can only show on an otherwise idle machine.
    """
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return "?"
    return ("on (threads share their session's CPU share: a second thread only helps when "
            "other sessions leave a core idle)" if on else "off")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# =============================================================================================
# CPU timing
# =============================================================================================
_FLUSH: list = []


def flush_caches(nbytes: int = 96 * 2**20) -> None:
    """Evict the CPU caches by writing a buffer well beyond the last-level cache."""
    if not _FLUSH:
        import numpy as np

        _FLUSH.append(np.zeros(nbytes, dtype=np.uint8))
    _FLUSH[0] += 1


def time_cases(base: Callable[[], object], packed: Callable[[], object], repeats: int,
               warmup: int = 2) -> dict[str, list[float]]:
    """Wall-clock timings (ms) of a baseline and a packed callable, cold and warm caches.

    cold: caches flushed before every call (weights come from DRAM, as for a model whose
    weights do not stay cached); warm: the call right after an identical call (weights in
    cache). Baseline and packed calls alternate, so load changes hit both alike.
    """
    for _ in range(warmup):
        base()
        packed()
    out: dict[str, list[float]] = {"base_cold": [], "packed_cold": [], "base_warm": [],
                                   "packed_warm": []}
    for _ in range(repeats):
        for name, fn in (("base", base), ("packed", packed)):
            flush_caches()
            t0 = time.perf_counter()
            fn()
            out[f"{name}_cold"].append((time.perf_counter() - t0) * 1e3)
            fn()
            t0 = time.perf_counter()
            fn()
            out[f"{name}_warm"].append((time.perf_counter() - t0) * 1e3)
    return out


def _fmt_ms(ts: list[float]) -> str:
    med = statistics.median(ts)
    if len(ts) >= 4:
        q = statistics.quantiles(ts, n=4)
        return f"{med:.3f} ({q[0]:.3f}-{q[2]:.3f})"
    return f"{med:.3f}"


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3f}"


PLANS: dict[str, dict] = {
    "full": {"gemv_n": (4096, 8192), "gemv_m": (1, 4, 16), "gemm_n": 1024, "multibit_n": 4096,
             "planes": (2, 3), "convs": [(1, 64, 56, 64, 1), (1, 256, 14, 256, 1),
                                         (8, 128, 28, 128, 1), (1, 256, 13, 384, 2)],
             "gpu_gemv_n": (4096, 8192, 16384), "gpu_gemm_n": (4096, 8192),
             "gpu_gemm_mn": [(256, 4096), (4096, 4096), (8192, 8192)],
             "thread_gemm": [(256, 4096), (1, 8192), (1, 4096)],
             "thread_convs": [(256, 128, 14, 128, 1), (1, 64, 8, 64, 1)],
             "roofline_n": (4096, 8192)},
    # GPU re-measurement inside a short lease: GEMV-like rows and two GEMM shapes, no extra paths
    "gpu_short": {"gemv_n": (4096,), "gemv_m": (1,), "gemm_n": 512, "multibit_n": 4096,
                  "planes": (2,), "convs": [], "gpu_gemv_n": (4096, 8192, 16384),
                  "gpu_gemm_n": (8192,), "gpu_gemm_mn": [(256, 4096), (8192, 8192)],
                  "gpu_gemv_small_n": [(1, 1024, 4096), (4, 512, 8192), (1, 1024, 16384)],
                  "gpu_fused": [("linear", 1, 4096), ("linear", 256, 4096),
                                ("conv", 1, 64, 56), ("conv", 8, 256, 14)],
                  "gpu_compare_paths": False},
    "quick": {"gemv_n": (4096,), "gemv_m": (1, 16), "gemm_n": 512, "multibit_n": 4096,
              "planes": (2,), "convs": [(1, 256, 14, 256, 1)], "gpu_gemv_n": (4096,),
              "gpu_gemm_n": (4096,), "thread_gemm": [(256, 4096), (1, 8192)],
              "thread_convs": [(64, 128, 14, 128, 1)], "roofline_n": (8192,)},
    # plumbing checks only (tests): tiny shapes, numbers meaningless
    "tiny": {"gemv_n": (64,), "gemv_m": (1, 3), "gemm_n": 48, "multibit_n": 64, "planes": (2,),
             "convs": [(1, 5, 6, 7, 1), (1, 4, 5, 6, 2)], "gpu_gemv_n": (64,),
             "gpu_gemv_m": (1, 3), "gpu_gemm_n": (48,), "gpu_gemv_small_n": [(1, 16, 256)],
             "gpu_fused": [("linear", 3, 70), ("conv", 1, 37, 5)],
             "thread_gemm": [(8, 64), (1, 64)],
             "thread_convs": [(2, 5, 6, 7, 1)], "roofline_n": (64,)},
}


def cpu_rows(plan: dict, repeats: int) -> list[list[str]]:
    """Time every CPU case of ``plan``; one report row per case."""
    rows: list[list[str]] = []
    g = torch.Generator().manual_seed(0)

    def add(case, shape, base_name, t, wb_base, wb_packed):
        med = {k: statistics.median(v) for k, v in t.items()}
        cold = med["base_cold"] / med["packed_cold"]
        warm = med["base_warm"] / med["packed_warm"]
        rows.append([case, shape, base_name, _fmt_ms(t["base_cold"]), _fmt_ms(t["packed_cold"]),
                     f"{cold:.2f}x", _fmt_ms(t["base_warm"]), _fmt_ms(t["packed_warm"]),
                     f"{warm:.2f}x", f"{_mb(wb_base)} -> {_mb(wb_packed)}"])
        print(f"  {case:<34} {shape:<24} cold {med['base_cold']:8.3f} / {med['packed_cold']:8.3f}"
              f" ms = {cold:6.2f}x   warm {med['base_warm']:8.3f} / {med['packed_warm']:8.3f} ms"
              f" = {warm:6.2f}x", flush=True)

    # -- both-binary GEMV-like: sign+pack activations, xnor_gemm vs fp32 x @ W.T ---------------
    for n in plan["gemv_n"]:
        w = torch.randn(n, n, generator=g)
        wp = K.pack_signs(w)
        for m in plan["gemv_m"]:
            x = torch.randn(m, n, generator=g)
            t = time_cases(lambda: x @ w.T,
                           lambda: K.xnor_gemm(K.pack_signs(x), wp, n, backend="cpu"), repeats)
            add("xnor GEMV (both binary)", f"M={m} N=K={n}", "torch fp32 matmul", t,
                w.numel() * 4, wp.numel() * 4)
    # -- both-binary GEMM ------------------------------------------------------------------------
    n = plan["gemm_n"]
    a, w = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    wp = K.pack_signs(w)
    t = time_cases(lambda: a @ w.T, lambda: K.xnor_gemm(K.pack_signs(a), wp, n, backend="cpu"),
                   max(3, repeats // 2))
    add("xnor GEMM (both binary, int8 mm)", f"M=N=K={n}", "torch fp32 matmul", t,
        w.numel() * 4, wp.numel() * 4)
    # -- binary weights x fp32 activations ------------------------------------------------------
    for n in plan["gemv_n"]:
        w = torch.randn(n, n, generator=g)
        wp = K.pack_signs(w)
        scale = w.abs().mean(1)
        for m in plan["gemv_m"]:
            x = torch.randn(m, n, generator=g)
            t = time_cases(lambda: x @ w.T,
                           lambda: K.binary_weight_gemm(x, wp, scale, backend="cpu"), repeats)
            add("binary-weight GEMV (fp32 x)", f"M={m} N=K={n}", "torch fp32 matmul", t,
                w.numel() * 4, wp.numel() * 4 + scale.numel() * 4)
    # -- multiple binarization (Tang et al.): residual planes + one multibit call ---------------
    n = plan["multibit_n"]
    w = torch.randn(n, n, generator=g)
    wp = K.pack_signs(w)
    x = torch.randn(1, n, generator=g)
    for p in plan["planes"]:
        def packed(p=p):
            planes, alpha = K.residual_binarize(x, p, backend="cpu")
            return K.multibit_xnor_gemm(planes, wp, alpha, n, backend="cpu")
        t = time_cases(lambda: x @ w.T, packed, repeats)
        add(f"multibit GEMV ({p} planes)", f"M=1 N=K={n}", "torch fp32 matmul", t,
            w.numel() * 4, wp.numel() * 4)
    # -- packed conv (sign(x) * sign(w), zero padding) vs float conv -----------------------------
    for nb, c, hw, oc, groups in plan["convs"]:
        x = torch.randn(nb, c, hw, hw, generator=g)
        w = torch.randn(oc, c // groups, 3, 3, generator=g)
        wp = K.pack_conv_weight(w)
        scale = w.abs().mean((1, 2, 3))
        t = time_cases(lambda: F.conv2d(x, w, padding=1, groups=groups),
                       lambda: K.binary_conv2d(x, wp, scale, padding=1, groups=groups,
                                               backend="cpu"), max(3, repeats // 2))
        add("binary conv2d 3x3 pad 1" + (f" groups={groups}" if groups > 1 else ""),
            f"N={nb} C={c} HW={hw} OC={oc}", "torch fp32 conv2d", t, w.numel() * 4,
            wp.numel() * 4)
    return rows


# =============================================================================================
# CPU threads: 1 vs all kernel threads, and the cold GEMV against a streaming read
# =============================================================================================
THREAD_TORCH_SETTINGS = (1, 2)  # torch.set_num_threads values the thread table is measured under


def _kernel_threads_setter(threads: int) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Wrap a packed call so that it runs with ``threads`` compiled-kernel threads."""
    from bnnbench.kernels import cpu

    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            saved = cpu.KERNEL_THREADS
            cpu.KERNEL_THREADS = threads
            try:
                return fn()
            finally:
                cpu.KERNEL_THREADS = saved
        return run
    return wrap


def cpu_thread_rows(plan: dict, repeats: int) -> list[list[str]]:
    """1 vs 2 compiled-kernel threads on the same calls, under torch threads 1 and 2.

    Both variants alternate (``time_cases``: "base" = 1 kernel thread, "packed" = 2), cold and
    warm. Torch's thread count matters because torch's OpenMP workers spin for a while after
    each torch op (here: the activation packing and the conv's epilogue) on the cores the
    kernel threads want; the rows show what that costs.
    """
    from bnnbench.kernels import cpu
    rows: list[list[str]] = []
    g = torch.Generator().manual_seed(1)
    one, two = _kernel_threads_setter(1), _kernel_threads_setter(2)
    cases: list[tuple[str, str, int, Callable[[], object]]] = []
    for m, n in plan["thread_gemm"]:
        x, w = torch.randn(m, n, generator=g), torch.randn(n, n, generator=g)
        wp = K.pack_signs(w)
        kw = wp.shape[1]
        path = "popcount" if cpu.use_popcount(m, n) else "int8 mm"
        cases.append((f"xnor {'GEMV' if m == 1 else 'GEMM-like'} (both binary, {path})",
                      f"M={m} N=K={n}", m * n * kw,
                      lambda x=x, wp=wp, n=n: K.xnor_gemm(K.pack_signs(x), wp, n, backend="cpu")))
    for nb, c, hw, oc, groups in plan["thread_convs"]:
        x = torch.randn(nb, c, hw, hw, generator=g)
        wp = K.pack_conv_weight(torch.randn(oc, c // groups, 3, 3, generator=g))
        words = wp.shape[-1]
        cases.append(("binary conv2d 3x3 pad 1", f"N={nb} C={c} HW={hw} OC={oc}",
                      nb * hw * hw * oc * 9 * words,
                      lambda x=x, wp=wp, gr=groups: K.binary_conv2d(x, wp, padding=1, groups=gr,
                                                                     backend="cpu")))
    saved_torch = torch.get_num_threads()
    try:
        for torch_threads in THREAD_TORCH_SETTINGS:
            torch.set_num_threads(torch_threads)
            for case, shape, work, fn in cases:
                threaded = work >= cpu.PARALLEL_MIN_WORDS and cpu.numba.config.NUMBA_NUM_THREADS > 1
                reps = repeats if work < 2**27 else max(5, repeats // 2)
                t = time_cases(one(fn), two(fn), reps)
                med = {k: statistics.median(v) for k, v in t.items()}
                cold = med["base_cold"] / med["packed_cold"]
                warm = med["base_warm"] / med["packed_warm"]
                rows.append([case, shape, str(torch_threads), f"{work / 1e6:.2f}",
                             "threaded" if threaded else "one thread (below threshold)",
                             _fmt_ms(t["base_cold"]), _fmt_ms(t["packed_cold"]), f"{cold:.2f}x",
                             _fmt_ms(t["base_warm"]), _fmt_ms(t["packed_warm"]),
                             f"{warm:.2f}x"])
                print(f"  threads 1->2 {case:<40} {shape:<22} torch {torch_threads}: cold "
                      f"{med['base_cold']:8.3f} -> {med['packed_cold']:8.3f} ms = {cold:5.2f}x"
                      f"   warm {med['base_warm']:8.3f} -> {med['packed_warm']:8.3f} ms = "
                      f"{warm:5.2f}x", flush=True)
    finally:
        torch.set_num_threads(saved_torch)
    return rows


def _stream_read_callables(nbytes: int) -> dict[str, Callable[[], object]]:
    """Plain streaming reads of ``nbytes``: numpy's sum over uint32 (one thread) and the
    compiled uint64 sum on 1 and 2 threads. The fastest is the roofline."""
    import numpy as np

    from bnnbench.kernels import cpu_jit as jit
    from bnnbench.kernels import cpu
    words = np.ones(nbytes // 8, dtype=np.uint64)
    jit.stream_read(words[:8])
    jit.stream_read_parallel(words[:8])

    def parallel() -> object:
        cpu.numba.set_num_threads(min(2, cpu.numba.config.NUMBA_NUM_THREADS))
        return jit.stream_read_parallel(words)

    return {"numpy uint32 sum (1 thread)": lambda: words.view(np.uint32).sum(),
            "compiled uint64 sum, 1 thread": lambda: jit.stream_read(words),
            "compiled uint64 sum, 2 threads": parallel}


def cpu_roofline_rows(plan: dict, repeats: int) -> tuple[list[list[str]], list[str]]:
    """Cold packed GEMV (M=1) bytes/s as a fraction of a cold streaming read of as many bytes.

    Returns the table rows and one goal line per shape (the issue's goal: >= 50% at
    N = K = 8192). The GEMV is timed on pre-packed activations (the kernel alone, as a packed
    network calls it), 1 and 2 kernel threads; every timed call follows a cache flush.
    """
    rows: list[list[str]] = []
    goals: list[str] = []
    g = torch.Generator().manual_seed(2)
    for n in plan["roofline_n"]:
        wp = K.pack_signs(torch.randn(n, n, generator=g))
        ap = K.pack_signs(torch.randn(1, n, generator=g))
        nbytes = wp.numel() * 4
        calls = dict(_stream_read_callables(nbytes))
        calls["packed GEMV, 1 kernel thread"] = _kernel_threads_setter(1)(
            lambda: K.xnor_gemm(ap, wp, n, backend="cpu"))
        calls["packed GEMV, 2 kernel threads"] = _kernel_threads_setter(2)(
            lambda: K.xnor_gemm(ap, wp, n, backend="cpu"))
        from bnnbench.kernels import cpu_jit as jit
        import numpy as np

        word = np.uint64 if ap.shape[1] % 2 == 0 else np.uint32
        a_words, w_words = ap.numpy().view(word), wp.numpy().view(word)
        out = np.empty((1, n), np.int32)
        # the compiled loop without the op's dispatch and checks (~60-70 us per call here)
        calls["popcount loop alone (compiled), 1 thread"] = (
            lambda: jit.xnor_popcount_gemm(a_words, w_words, n, out))
        times: dict[str, list[float]] = {name: [] for name in calls}
        for fn in calls.values():
            fn()
        for _ in range(repeats):  # interleaved, each call cold
            for name, fn in calls.items():
                flush_caches()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        bw = {name: nbytes / statistics.median(ts) for name, ts in times.items()}
        roof_name = max((k for k in bw if "packed" not in k), key=bw.get)
        roof = bw[roof_name]
        for name, ts in times.items():
            rows.append([f"M=1 N=K={n}", name, _mb(nbytes), _fmt_ms([t * 1e3 for t in ts]),
                         f"{bw[name] / 1e9:.2f}", f"{100 * bw[name] / roof:.0f}%"
                         + (" (roofline)" if name == roof_name else "")])
        best = max(bw["packed GEMV, 1 kernel thread"], bw["packed GEMV, 2 kernel threads"])
        frac = best / roof
        loop = bw["popcount loop alone (compiled), 1 thread"]
        goals.append(f"**Cold GEMV roofline** (M=1 N=K={n}, >= 50% of the streaming read): "
                     f"packed GEMV (`xnor_gemm`, best of 1 and 2 kernel threads) "
                     f"{best / 1e9:.2f} GB/s = {100 * frac:.0f}% of {roof / 1e9:.2f} GB/s "
                     f"({roof_name}): {'met' if frac >= 0.5 else 'NOT met'}; the compiled loop "
                     f"alone {100 * loop / roof:.0f}%.")
        print(f"  roofline M=1 N=K={n}: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s"
                                                     for k, v in bw.items()), flush=True)
    return rows, goals


def thread_goal_lines(rows: list[list[str]]) -> list[str]:
    """The issue's thread goal read from the rows: >= 1.7x from 1 to 2 threads at batch 256."""
    out = []
    for r in rows:
        if r[1].startswith("M=256") or r[1].startswith("N=256"):
            cold, warm = float(r[7].rstrip("x")), float(r[10].rstrip("x"))
            out.append(f"**Threads** ({r[0]}, {r[1]}, torch threads {r[2]}, >= 1.7x from 1 to 2 "
                       f"kernel threads): {cold:.2f}x cold, {warm:.2f}x warm: "
                       f"{'met' if min(cold, warm) >= 1.7 else 'NOT met'}.")
    return out


# =============================================================================================
# GPU timing (runs only when CUDA is available)
# =============================================================================================
GPU_PLAN = [  # (section, case, shape, baseline) for the pending table
    *[("gemv", "xnor GEMV (both binary)", f"M={m} N=K={n}", "torch bf16 matmul")
      for n in (4096, 8192, 16384) for m in (1, 4, 16) if n <= 8192 or m <= 4],
    *[("gemv", "binary-weight GEMV (bf16 x)", f"M={m} N=K={n}", "torch bf16 matmul")
      for n in (4096, 8192, 16384) for m in (1, 4, 16) if n <= 8192 or m <= 4],
    *[("gemv", "xnor GEMV, small N (split-K)", f"M={m} N={n} K={k}", "torch bf16 matmul")
      for m, n, k in PLANS["gpu_short"]["gpu_gemv_small_n"]],
    *[("gemm", "xnor GEMM (`xnor_gemm`, auto path)", shape, "torch bf16 matmul")
      for shape in ("M=256 N=K=4096", "M=N=K=4096", "M=N=K=8192")],
]


def _nominal_bw(name: str) -> float | None:
    for key, bw in NOMINAL_BW.items():
        if key.lower() in name.lower():
            return bw * 1e9
    return None


def _gpu_time_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench, do_bench_cudagraph

    fn()  # autotune outside the timed region
    torch.cuda.synchronize()
    try:
        return float(do_bench_cudagraph(fn, rep=200, return_mode="median"))
    except Exception:  # noqa: BLE001 - fall back to stream timing if capture is impossible
        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def _copy_bandwidth(dev: torch.device, nbytes: int = 2**30) -> float:
    """Achievable HBM bandwidth (bytes/s) of a device-to-device copy (read + write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    t = _gpu_time_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (t * 1e-3)


def gpu_info(dev: torch.device) -> tuple[dict[str, str], int, float]:
    """(report lines, L2 bytes, reference HBM bandwidth in bytes/s) of a CUDA device."""
    name = torch.cuda.get_device_name(dev)
    props = torch.cuda.get_device_properties(dev)
    l2 = int(getattr(props, "L2_cache_size", 50 * 2**20))
    nominal = _nominal_bw(name)
    copy_bw = _copy_bandwidth(dev)
    info = {"GPU": name, "SMs": str(props.multi_processor_count), "L2": f"{l2 / 2**20:.0f} MiB",
            "copy bandwidth (measured)": f"{copy_bw / 1e9:.0f} GB/s",
            "nominal HBM bandwidth": f"{nominal / 1e9:.0f} GB/s" if nominal else "unknown",
            "HBM fraction is relative to": "nominal" if nominal else "measured copy bandwidth"}
    return info, l2, nominal or copy_bw


def gemlite_missing() -> str | None:
    """Why gemlite's A16W1 peer row cannot run here (one line), or None when it can."""
    try:
        from gemlite.helper import A16Wn  # noqa: F401
    except Exception as e:  # noqa: BLE001 - optional peer (not installed in CI)
        return f"gemlite not importable ({type(e).__name__}: {str(e)[:120]})"
    return None


def _gemlite_a16w1(w_sign: torch.Tensor, scale: torch.Tensor) -> Callable | None:
    """gemlite's 1-bit-weight layer (A16W1) holding ``scale[n] * sign(w)``, or None without gemlite.

    gemlite dequantizes ``(W_q - zero) * s`` per group: bits {0, 1} with zero 0.5 and s = 2 *
    scale give +-scale, the same weights our binary-weight kernel multiplies.
    """
    try:
        from gemlite.helper import A16Wn
    except Exception:  # noqa: BLE001 - optional peer (not installed in CI)
        return None
    n, k = w_sign.shape
    group = 128
    bits = (w_sign >= 0).to(torch.uint8)  # bit 1 = +scale; sign(0) = +1 as in our packing
    scales = (2 * scale.float()).repeat_interleave(k // group).view(n, k // group)
    zeros = torch.full_like(scales, 0.5)
    layer = A16Wn(device=str(w_sign.device), dtype=torch.bfloat16).from_weights(
        bits, scales.to(torch.bfloat16), zeros.to(torch.bfloat16), W_nbits=1, group_size=group)
    return layer


def gemlite_diagnosis(y: torch.Tensor, x: torch.Tensor, sw: torch.Tensor,
                      scale: torch.Tensor) -> str:
    """Why gemlite's output failed the float64 check, in a few words: its largest relative
    error, and which plausible misreading of our construction it matches instead (transposed
    weights, flipped signs, scale missing or doubled), if any. The 2026-11-26 H200 run marked
    every gemlite row WRONG without saying how; this says it in the report."""
    y = y.double()
    ref = (x.double() @ sw.T) * scale.double()
    err = ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    alternatives = {"-ref (signs flipped)": -ref, "no scale": x.double() @ sw.T,
                    "scale x2": 2 * ref}
    if sw.shape[0] == sw.shape[1]:
        alternatives["weights transposed"] = (x.double() @ sw) * scale.double()
    match = [name for name, alt in alternatives.items()
             if ((y - alt).abs() <= 2e-2 * (alt.abs() + alt.abs().mean())).all()]
    return f"max rel err {err:.2g}; matches {', '.join(match) if match else 'none of'}" + (
        "" if match else " transposed / flipped / unscaled / 2x scale")


def gpu_rows(plan: dict, dev: torch.device, l2: int, ref_bw: float,
             timer: Callable[[Callable[[], object]], float] = _gpu_time_ms,
             peers: bool = True, sections: tuple[str, ...] = ("gemv", "gemm"),
             on_row: Callable[[list[list[str]]], None] | None = None) -> list[list[str]]:
    """Time the GPU cases of ``plan`` with ``timer`` (ms); one report row per case.

    ``on_row(rows)`` runs after every row (the report is rewritten, so a run cut short by a
    time limit still leaves every row it measured).

    Every packed row is first checked against an independent float64 computation on the same
    inputs (exact integers for both-binary rows, a rounding bound for float rows); a row whose
    check fails is reported as WRONG, with its time.
    """
    rows: list[list[str]] = []
    tk = None
    if dev.type == "cuda":
        from bnnbench.kernels import triton_kernels as tk

    def rotated(make: Callable[[int], tuple], fn: Callable, bytes_per_copy: int) -> float:
        """Run fn over R weight copies totalling > 4x L2, so that every call reads HBM."""
        r = max(2, min(64, math.ceil(4 * l2 / max(bytes_per_copy, 1))))
        copies = [make(i) for i in range(r)]
        return timer(lambda: [fn(*c) for c in copies]) / r

    def row(case, shape, base, tb, tp, check: str, moved_bytes=None, macs=None):
        speed = tb / tp
        extra = ""
        if moved_bytes is not None:
            extra = f"{moved_bytes / (tp * 1e-3) / ref_bw * 100:.0f}% of HBM"
        elif macs is not None:
            extra = f"{macs / (tp * 1e-3) / 1e12:.0f} T MAC/s"
        rows.append([case, shape, base, f"{tb * 1e3:.1f}", f"{tp * 1e3:.1f}", f"{speed:.2f}x",
                     extra, check])
        print(f"  {case:<40} {shape:<18} base {tb * 1e3:9.1f} us packed {tp * 1e3:9.1f} us "
              f"{speed:6.2f}x {extra} {rows[-1][-1]}", flush=True)
        if on_row is not None:
            on_row(rows)

    def failed(case, shape, e):
        rows.append([case, shape, "-", "-", "-", "-", f"failed: {type(e).__name__}: {e}"[:200],
                     "-"])
        print(f"  {case} {shape} FAILED {type(e).__name__}: {e}", flush=True)
        if on_row is not None:
            on_row(rows)

    def exact(got, ref) -> str:
        return "exact" if torch.equal(got.double(), ref.double()) else "WRONG"

    def near(y, ref, rtol=2e-2) -> str:
        ok = ((y.double() - ref).abs() <= rtol * (ref.abs() + ref.abs().mean())).all()
        return "ok" if bool(ok) else "WRONG"

    def pm1(t):  # +-1 with sign(0) = +1, as the packing has it
        return torch.sign(t.double()) + (t == 0)

    gen = torch.Generator(device=dev).manual_seed(0)
    half = torch.bfloat16 if dev.type == "cuda" else torch.float32  # CPU: plumbing tests only
    if peers and "gemv" in sections and (why := gemlite_missing()) is not None:
        rows.append(["gemlite A16W1 (peer, bf16 x)", "all", "-", "-", "-", "-",
                     f"skipped: {why}", "-"])
        print(f"  gemlite A16W1 rows skipped: {why}", flush=True)
        peers = False
    gemv_m = plan.get("gpu_gemv_m", (1, 4, 16))
    for n in plan["gpu_gemv_n"] if "gemv" in sections else ():
        for m in (gemv_m if n <= 8192 else [mm for mm in gemv_m if mm <= 4]):
            shape = f"M={m} N=K={n}"
            try:
                x = torch.randn(m, n, device=dev, dtype=half, generator=gen)
                ap = K.pack_signs(x)
                w0 = torch.randn(n, n, device=dev, dtype=half, generator=gen)
                wp0, s0 = K.pack_signs(w0), w0.float().abs().mean(1)
                sw = pm1(w0)
                ref_xnor = pm1(x) @ sw.T
                ref_binary_weight = (x.double() @ sw.T) * s0.double()

                def mk_dense(i, n=n):
                    return (torch.randn(n, n, device=dev, dtype=half, generator=gen),)

                def mk_packed(i, n=n):
                    w = torch.randn(n, n, device=dev, dtype=half, generator=gen)
                    return (K.pack_signs(w), w.float().abs().mean(1))

                tb = rotated(mk_dense, lambda w, x=x: torch.matmul(x, w.T), n * n * 2)
                ok = exact(K.xnor_gemm(ap, wp0, n), ref_xnor)
                tp = rotated(mk_packed, lambda wp, s, ap=ap, n=n: K.xnor_gemm(ap, wp, n),
                             n * n // 8)
                row("xnor GEMV (both binary)", shape, "torch bf16 matmul", tb, tp, ok,
                    moved_bytes=n * n // 8 + ap.numel() * 4 + m * n * 4)
                if tk is not None and m >= 4 and plan.get("gpu_compare_paths", True):
                    ok = exact(tk.xnor_gemm(ap, wp0, n, path="dot"), ref_xnor)
                    tq = rotated(mk_packed, lambda wp, s, ap=ap, n=n:
                                 tk.xnor_gemm(ap, wp, n, path="dot"), n * n // 8)
                    row("xnor GEMV, int8-dot path forced", shape, "torch bf16 matmul", tb, tq,
                        ok, moved_bytes=n * n // 8 + ap.numel() * 4 + m * n * 4)
                ok = near(K.binary_weight_gemm(x, wp0, s0), ref_binary_weight)
                tw = rotated(mk_packed, lambda wp, s, x=x: K.binary_weight_gemm(x, wp, s),
                             n * n // 8)
                row("binary-weight GEMV (bf16 x)", shape, "torch bf16 matmul", tb, tw, ok,
                    moved_bytes=n * n // 8 + n * 4 + x.numel() * 2 + m * n * 2)
                if tk is not None and m <= tk.BW_GEMV_MAX_M:  # the previous GEMV layout
                    ok = near(tk.binary_weight_gemm(x, wp0, s0, gemv_layout="lanes"),
                              ref_binary_weight)
                    tl_ = rotated(mk_packed, lambda wp, s, x=x: tk.binary_weight_gemm(
                        x, wp, s, gemv_layout="lanes"), n * n // 8)
                    row("binary-weight GEMV, old lanes layout", shape, "torch bf16 matmul", tb,
                        tl_, ok, moved_bytes=n * n // 8 + n * 4 + x.numel() * 2 + m * n * 2)
                if peers and n <= 8192:
                    try:
                        gl0 = _gemlite_a16w1(w0, s0)
                        if gl0 is not None:
                            y_gl = gl0(x)
                            ok = near(y_gl, ref_binary_weight)
                            if ok != "ok":
                                ok = f"WRONG ({gemlite_diagnosis(y_gl, x, sw, s0)})"

                            def mk_gl(i, n=n):
                                w = torch.randn(n, n, device=dev, dtype=half, generator=gen)
                                return (_gemlite_a16w1(w, w.float().abs().mean(1)),)

                            tg = rotated(mk_gl, lambda layer, x=x: layer(x), n * n // 8)
                            row("gemlite A16W1 (peer, bf16 x)", shape, "torch bf16 matmul", tb,
                                tg, ok, moved_bytes=n * n // 8 + x.numel() * 2 + m * n * 2)
                    except Exception as e:  # noqa: BLE001 - a peer's failure is a row, not a stop
                        failed("gemlite A16W1 (peer, bf16 x)", shape, e)
            except Exception as e:  # noqa: BLE001 - record, keep going
                failed("GEMV-like", shape, e)
    # small N: too few output tiles for the SMs, so the pruning picks split-K configs
    for m, n, k in plan.get("gpu_gemv_small_n", ()) if "gemv" in sections else ():
        shape = f"M={m} N={n} K={k}"
        try:
            x = torch.randn(m, k, device=dev, dtype=half, generator=gen)
            ap = K.pack_signs(x)
            w0 = torch.randn(n, k, device=dev, dtype=half, generator=gen)
            ok = exact(K.xnor_gemm(ap, K.pack_signs(w0), k), pm1(x) @ pm1(w0).T)

            def mk_dense_nk(i, n=n, k=k):
                return (torch.randn(n, k, device=dev, dtype=half, generator=gen),)

            def mk_packed_nk(i, n=n, k=k):
                return (K.pack_signs(torch.randn(n, k, device=dev, dtype=half, generator=gen)),)

            tb = rotated(mk_dense_nk, lambda w, x=x: torch.matmul(x, w.T), n * k * 2)
            tp = rotated(mk_packed_nk, lambda wp, ap=ap, k=k: K.xnor_gemm(ap, wp, k), n * k // 8)
            row("xnor GEMV, small N (split-K)", shape, "torch bf16 matmul", tb, tp, ok,
                moved_bytes=n * k // 8 + ap.numel() * 4 + m * n * 4)
        except Exception as e:  # noqa: BLE001 - record, keep going
            failed("xnor GEMV, small N (split-K)", shape, e)
    for case in plan.get("gpu_fused", ()) if "gemv" in sections else ():
        try:
            fused_pair_row(case, dev, half, timer, row, exact)
        except Exception as e:  # noqa: BLE001 - record, keep going
            failed("fused BN -> sign pair", str(case), e)
    gemm_shapes = plan.get("gpu_gemm_mn", [(n, n) for n in plan["gpu_gemm_n"]])
    for m, n in gemm_shapes if "gemm" in sections else ():
        shape = f"M={m} N=K={n}" if m != n else f"M=N=K={n}"
        try:
            a = torch.randn(m, n, device=dev, dtype=half, generator=gen)
            w = torch.randn(n, n, device=dev, dtype=half, generator=gen)
            ap, wp = K.pack_signs(a), K.pack_signs(w)
            sa, sw = pm1(a).to(torch.int8), pm1(w).to(torch.int8)
            tb = timer(lambda: torch.matmul(a, w.T))
            # an exact int32 reference independent of ours: cuBLASLt int8 where it takes the
            # shape, else float64 (exact for these integer sums)
            int_mm_ref = dev.type == "cuda" and m > 16 and m % 8 == 0 and n % 8 == 0
            ref = torch._int_mm(sa, sw.T) if int_mm_ref else sa.double() @ sw.double().T
            ok = exact(K.xnor_gemm(ap, wp, n), ref)
            tp = timer(lambda: K.xnor_gemm(ap, wp, n))
            row("xnor GEMM (`xnor_gemm`, auto path)", shape, "torch bf16 matmul", tb, tp, ok,
                macs=m * n * n)
            if tk is not None and plan.get("gpu_compare_paths", True):
                ok = exact(tk.xnor_gemm(ap, wp, n, path="dot"), ref)
                td = timer(lambda: tk.xnor_gemm(ap, wp, n, path="dot"))
                row("xnor GEMM, Triton int8-dot path forced", shape, "torch bf16 matmul", tb, td,
                    ok, macs=m * n * n)
            if int_mm_ref and tk is not None:  # cuBLASLt int8 alone, for the roofline
                ti = timer(lambda: torch._int_mm(sa, sw.T))
                row("`_int_mm` on unpacked +-1 int8 (no unpack)", shape, "torch bf16 matmul",
                    tb, ti, "is the reference", macs=m * n * n)
        except Exception as e:  # noqa: BLE001
            failed("xnor GEMM", shape, e)
    return rows


def fused_pair_row(case: tuple, dev: torch.device, dtype: torch.dtype,
                   timer: Callable[[Callable[[], object]], float], row: Callable,
                   exact: Callable) -> None:
    """Two binary layers joined by BatchNorm -> htanh -> sign, unfused (float output, the
    BatchNorm, the pack kernel) vs fused (the first kernel writes the second one's packed
    input: :mod:`bnnbench.packed.fusion`). ``case``: ("linear", M, N) with N = K, or
    ("conv", batch, channels, pixels) for 3x3 convs, stride 1, padding 1. The packed bits the
    second layer reads and its output are checked equal."""
    from bnnbench.bench import trained_like_batchnorm
    from bnnbench.packed.fusion import sign_thresholds

    gen = torch.Generator(device=dev).manual_seed(1)
    kind = case[0]
    if kind == "linear":
        _, m, n = case
        k, shape = n, f"M={m} N=K={n}"
        x = torch.randn(m, n, device=dev, dtype=dtype, generator=gen)
        w1, w2 = (K.pack_signs(torch.randn(n, n, device=dev, dtype=dtype, generator=gen))
                  for _ in range(2))
        bn = torch.nn.BatchNorm1d(n)
    else:
        _, b, c, px = case
        k, shape = c * 9, f"N={b} C=OC={c} {px}x{px} 3x3"
        x = torch.randn(b, c, px, px, device=dev, dtype=dtype, generator=gen)
        w1, w2 = (K.pack_conv_weight(torch.randn(c, c, 3, 3, device=dev, dtype=dtype,
                                                 generator=gen)) for _ in range(2))
        bn = torch.nn.BatchNorm2d(c)
    trained_like_batchnorm(bn)
    with torch.no_grad():  # some negative and zero gammas, as trained networks have
        bn.weight.normal_(generator=torch.Generator().manual_seed(2))
        bn.weight[::7] = 0
    chain = [bn.to(dev, dtype).eval(), torch.nn.Hardtanh()]
    t, f = sign_thresholds(chain, k, bn.num_features, dtype, dev, kind == "conv")

    def float_mid(z):
        for module in chain:
            z = module(z)
        return z

    if kind == "linear":
        def run_unfused():
            return K.xnor_gemm(K.pack_signs(float_mid(K.xnor_gemm(K.pack_signs(x), w1, k)
                                                        .to(dtype))), w2, n)

        def run_fused():
            return K.xnor_gemm(K.xnor_gemm_signs(K.pack_signs(x), w1, k, t, f), w2, n)

        bits_u = K.pack_signs(float_mid(K.xnor_gemm(K.pack_signs(x), w1, k).to(dtype)))
        bits_f = K.xnor_gemm_signs(K.pack_signs(x), w1, k, t, f)
    else:
        def run_unfused():
            return K.binary_conv2d(float_mid(K.binary_conv2d(x, w1, padding=1)), w2, padding=1)

        def run_fused():
            return K.binary_conv2d(K.binary_conv2d_signs(x, w1, t, f, padding=1), w2, padding=1,
                                   in_channels=c)

        bits_u = K.pack_signs(float_mid(K.binary_conv2d(x, w1, padding=1)).permute(0, 2, 3, 1))
        bits_f = K.binary_conv2d_signs(x, w1, t, f, padding=1)
    with torch.no_grad():
        ok = exact(bits_f, bits_u)
        if ok == "exact":
            ok = exact(run_fused(), run_unfused())
        tu, tf = timer(lambda: run_unfused()), timer(lambda: run_fused())
    row(f"fused BN -> sign pair ({kind})", shape, "unfused: float out, BN, htanh, pack", tu, tf,
        ok)


# =============================================================================================
# report
# =============================================================================================
def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


GPU_GOALS = [  # (case, shape prefix, M values, goal speedup) from the packed-path issue
    ("xnor GEMV (both binary)", 4096, (1, 4), 4.0), ("xnor GEMV (both binary)", 8192, (1, 4), 8.0),
    ("xnor GEMV (both binary)", 16384, (1, 4), 12.0),
    ("binary-weight GEMV (bf16 x)", 4096, (1, 4, 16), 3.0),
    ("binary-weight GEMV (bf16 x)", 8192, (1, 4, 16), 6.0),
]


def gpu_goal_lines(rows: list[list[str]]) -> list[str]:
    """One line per goal of the issue, read from the measured rows: met / missed + the ratio."""
    def speed(case: str, shape: str) -> float | None:
        for r in rows:
            if r[0] == case and r[1] == shape and r[5].endswith("x"):
                return float(r[5].rstrip("x"))
        return None

    out = []
    for case, n, ms, goal in GPU_GOALS:
        for m in ms:
            v = speed(case, f"M={m} N=K={n}")
            if v is not None:
                out.append(f"- {case}, M={m} N=K={n}: >= {goal:g}x bf16: measured {v:.2f}x, "
                           f"**{'met' if v >= goal else 'missed'}**")
    for r in rows:
        if r[0] == "xnor GEMV (both binary)" and r[1].endswith("N=K=16384") and "% of HBM" in r[6]:
            frac = float(r[6].split("%")[0])
            out.append(f"- {r[0]}, {r[1]}: >= 70% of HBM: measured {frac:.0f}%, "
                       f"**{'met' if frac >= 70 else 'missed'}**")
    checks = {(r[0], r[1]): r[7] for r in rows}
    for m in (1, 4, 16):
        for n in (4096, 8192):
            ours = speed("binary-weight GEMV (bf16 x)", f"M={m} N=K={n}")
            peer = speed("gemlite A16W1 (peer, bf16 x)", f"M={m} N=K={n}")
            if peer is not None and checks[("gemlite A16W1 (peer, bf16 x)",
                                            f"M={m} N=K={n}")] != "ok":
                out.append(f"- binary-weight GEMV M={m} N=K={n} vs gemlite A16W1: not compared "
                           "(gemlite's result failed the float64 check)")
            elif ours is not None and peer is not None:
                out.append(f"- binary-weight GEMV M={m} N=K={n} faster than gemlite A16W1: "
                           f"{ours / peer:.2f}x gemlite's speed, "
                           f"**{'met' if ours > peer else 'missed'}**")
    v = speed("xnor GEMM (`xnor_gemm`, auto path)", "M=N=K=8192")
    if v is not None:
        out.append(f"- xnor GEMM M=N=K=8192: >= 1.5x cuBLAS bf16: measured {v:.2f}x, "
                   f"**{'met' if v >= 1.5 else 'missed'}**")
    return out or ["- no GPU row measured"]


def gpu_versions() -> dict[str, str]:
    """Device name, driver, CUDA and library versions for a GPU report's header."""
    import subprocess

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "?"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = "not installed"
    return {"driver": driver or "?", "CUDA (torch)": str(torch.version.cuda),
            "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version()}


def _table_gpu(rows: list[list[str]]) -> str:
    return _table(["case", "shape", "baseline", "baseline us", "packed us", "speedup",
                   "HBM fraction / throughput", "check vs float64"], rows)


def _write_report(out: Path, lines: list[str]) -> None:
    """Replace ``out`` atomically (:func:`bnnbench.files.write_atomic`)."""
    write_atomic(out, "\n".join(lines))


def write_gpu_report(out: Path, g_info: dict[str, str], g_rows: list[list[str]],
                     cmd: str, started: _dt.datetime) -> None:
    lines = [
        "# Packed kernel benchmarks: GPU",
        "",
        f"Written by `{cmd}`; do not edit by hand, rerun the command on a GPU machine to "
        "regenerate. CPU rows: `kernels.md`.",
        "",
        "## Machine",
        "",
        f"- date (UTC): {started:%Y-%m-%d %H:%M}",
        *[f"- {k}: {v}" for k, v in {**g_info, **gpu_versions()}.items()],
        "",
        "## Rows",
        "",
        "Median of `triton.testing.do_bench_cudagraph` (whole calls captured in a CUDA graph, so "
        "launch overhead is the GPU's, not Python's); baseline and packed rows timed in the same "
        "process on the same GPU. GEMV-like rows cycle through enough weight copies to exceed 4x "
        "L2, so weights come from HBM; the HBM fraction counts the bytes a row must move (packed "
        "weights, activations, outputs) over its time, relative to the nominal bandwidth. "
        "Packed rows include packing nothing: activations are packed once, beforehand (a packed "
        "network packs them in the previous layer). *check*: the packed result against a float64 "
        "computation on the same inputs (exact = equal integers; ok = within 2% relative; the "
        "`_int_mm` row is the GEMM rows' reference itself).",
        "",
        _table_gpu(g_rows),
        "",
        "## Goals (the packed-path issue)",
        "",
        *gpu_goal_lines(g_rows),
        "",
    ]
    _write_report(out, lines)


def report_command(args: argparse.Namespace) -> str:
    """The command line a report names as its generator: this module (``__spec__.name``, so
    the header follows the module if it moves again; the GPU report once named a module that
    no longer existed) and the options that change what is measured."""
    module = __spec__.name if __spec__ is not None else "bnnbench.bench.kernels"
    return f"python -m {module}" + (" --quick" if args.quick else "") + (
        f" --plan {args.plan}" if args.plan else "") + (
        f" --threads {args.threads}" if args.threads > 0 else "") + (
        " --gpu-only" if args.gpu_only else "") + (
        " --no-peers" if args.no_peers else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report path (default reports/kernels.md, with --gpu-only "
                         "reports/kernels_gpu.md)")
    ap.add_argument("--repeats", type=int, default=21, help="timed repeats per CPU row")
    ap.add_argument("--quick", action="store_true", help="few shapes, few repeats (smoke test)")
    ap.add_argument("--plan", choices=sorted(PLANS), default=None,
                    help="shape plan (default: full, or quick with --quick; tiny = tests only)")
    ap.add_argument("--no-gpu", action="store_true", help="skip GPU rows even if CUDA exists")
    ap.add_argument("--gpu-only", action="store_true",
                    help="GPU rows only, into their own report (needs CUDA)")
    ap.add_argument("--no-peers", action="store_true", help="skip peer libraries (gemlite)")
    ap.add_argument("--sections", default="gemv,gemm",
                    help="GPU sections to run, comma-separated (gemv, gemm)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default: torch's default, i.e. all cores)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    plan = PLANS[args.plan or ("quick" if args.quick else "full")]
    repeats = 5 if args.quick else args.repeats
    cmd = report_command(args)
    started = _dt.datetime.now(_dt.timezone.utc)

    if args.gpu_only:
        if not torch.cuda.is_available():
            print("bnnbench.bench.kernels: --gpu-only needs a CUDA GPU; run without it here")
            return 2
        out = args.out or DEFAULT_OUT.with_name("kernels_gpu.md")
        dev = torch.device("cuda")
        g_info, l2, ref_bw = gpu_info(dev)
        print("GPU rows:", g_info, flush=True)
        sections = tuple(args.sections.split(","))
        if sections != ("gemv", "gemm"):
            cmd += f" --sections {args.sections}"
        g_rows = gpu_rows(plan, dev, l2, ref_bw, peers=not args.no_peers, sections=sections,
                          on_row=lambda rows: write_gpu_report(out, g_info, rows, cmd, started))
        write_gpu_report(out, g_info, g_rows, cmd, started)
        print(f"wrote {out}")
        return 0
    out = args.out or DEFAULT_OUT

    load_before = loadavg()
    print(f"CPU rows ({cpu_model()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()})", flush=True)
    c_rows = cpu_rows(plan, repeats)
    print("CPU threads (compiled kernels 1 -> 2 threads) and the cold GEMV roofline", flush=True)
    t_rows = cpu_thread_rows(plan, repeats)
    r_rows, roof_goals = cpu_roofline_rows(plan, repeats)
    from bnnbench.kernels import cpu as cpu_mod
    layer = cpu_mod.threading_layer()
    load_after = loadavg()

    have_gpu = torch.cuda.is_available() and not args.no_gpu
    if have_gpu:
        print("GPU rows", flush=True)
        dev = torch.device("cuda")
        g_info, l2, ref_bw = gpu_info(dev)
        g_rows = gpu_rows(plan, dev, l2, ref_bw, peers=not args.no_peers)
    else:
        g_rows = [[case, shape, base, "-", "-", "-", PENDING, "-"]
                  for _, case, shape, base in GPU_PLAN]
        g_info = {"GPU": "none: " + PENDING + "; GPU rows measured on a GPU machine are in "
                  "`kernels_gpu.md` (`--gpu-only`)"}

    import numba
    import numpy as np

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = "not installed"
    lines = [
        "# Packed kernel benchmarks",
        "",
        f"Written by `{cmd}`; "
        "do not edit by hand, rerun the command to regenerate.",
        "",
        "## Machine",
        "",
        f"- date (UTC): {started:%Y-%m-%d %H:%M}",
        f"- CPU: {cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}",
        f"- load average (1/5/15 min) before / after the CPU rows: {load_before} / {load_after}"
        " (other jobs may share this machine)",
        f"- caches: {cache_sizes()}",
        f"- scheduler autogroup: {autogroup()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__} (threading layer {layer}, pool "
        f"{numba.config.NUMBA_NUM_THREADS} threads), triton {triton_version}",
        *[f"- {k}: {v}" for k, v in g_info.items()],
        "",
        "## CPU (`backend=\"cpu\"`)",
        "",
        f"Median wall time in ms over {repeats} repeats (interquartile range in brackets), after "
        "2 warm-ups. **cold**: CPU caches flushed (96 MiB written) before each call, so weights "
        "come from DRAM, as in a model whose weights do not stay cached; **warm**: the call "
        "right after an identical one (packed weights, 16-32x smaller, can stay in the last-level "
        "cache in a real model; fp32 weights of 64+ MiB never do). Baseline and packed calls "
        "alternate. Packed rows include packing the activations (`pack_signs`) or taking their "
        "signs (conv); weights are packed once, beforehand. Speedup = baseline median / packed "
        "median.",
        "",
        "CPU strategies (`bnnbench/kernels/cpu.py`): both-binary rows with few activation rows "
        "run one fused compiled popcount loop over the packed weights "
        "(`cpu_jit.xnor_popcount_gemm`, 64-bit words), the square GEMM unpacks to int8 for "
        "`torch._int_mm`; "
        "binary weights x floats use a byte lookup table (compiled for M <= 2, torch "
        "`embedding_bag` above); convolutions run the compiled direct popcount convolution "
        "(`cpu_jit.xnor_popcount_conv2d`, padded taps skipped). The popcount GEMM and the conv "
        "run on all of torch's threads (numba `prange`) above a work threshold, on one below "
        "it (next table).",
        "",
        cpu_target_line(c_rows),
        "",
        _table(["case", "shape", "baseline", "baseline cold", "packed cold", "speedup cold",
                "baseline warm", "packed warm", "speedup warm",
                "weight MiB (baseline -> packed)"], c_rows),
        "",
        "### Compiled-kernel threads: 1 vs 2",
        "",
        "The same packed call with the compiled kernels on 1 thread and on 2 "
        "(`bnnbench.kernels.cpu.KERNEL_THREADS`), alternating, cold and warm as above, under "
        "`torch.set_num_threads(1)` and `(2)` (torch's OpenMP workers spin after each torch op "
        "on the cores the kernel threads want). Calls with fewer than "
        f"{cpu_mod.PARALLEL_MIN_WORDS:,} word popcounts (`PARALLEL_MIN_WORDS`) stay on one "
        "thread whatever the setting (*path at 2 threads*). The rows above run with the "
        "defaults: kernel threads = torch's threads. Median ms (interquartile range); "
        "speedup = 1-thread median / 2-thread median. The machine is shared: the load average "
        "and the scheduler autogroup line above say how much of the second core other jobs "
        "left.",
        "",
        *thread_goal_lines(t_rows),
        "",
        _table(["case", "shape", "torch threads", "work (M word popcounts)",
                "path at 2 threads", "1 thread cold", "2 threads cold", "speedup cold",
                "1 thread warm", "2 threads warm", "speedup warm"], t_rows),
        "",
        "### Cold GEMV against the DRAM roofline",
        "",
        "Bytes/s of the packed GEMV (M=1, activations packed beforehand) reading its packed "
        "weights after a cache flush, as the public `xnor_gemm` call and as the compiled loop "
        "alone, against plain streaming reads of a buffer of the same size after a flush "
        "(numpy's sum over uint32 words, a compiled uint64 sum on 1 and 2 threads); the "
        "fastest read is the roofline. The flush also evicts the call's own Python and torch "
        "dispatch state, which is most of the difference between the call and the loop (a "
        "fixed cost, the same at both sizes). Median over "
        f"{repeats} interleaved cold calls each.",
        "",
        *roof_goals,
        "",
        _table(["shape", "call", "MiB read", "ms cold", "GB/s", "of roofline"], r_rows),
        "",
        "## GPU (Triton, `backend=\"auto\"` on CUDA)",
        "",
        "Median of `triton.testing.do_bench_cudagraph`; GEMV-like rows cycle through enough "
        "weight copies to exceed 4x L2, so weights come from HBM. Targets: both-binary GEMV "
        ">= 10x bf16 (byte-ratio limit 16x), binary weights x bf16 >= 6x, GEMM >= 1.5x.",
        "",
        _table_gpu(g_rows),
        "",
    ]
    _write_report(out, lines)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
