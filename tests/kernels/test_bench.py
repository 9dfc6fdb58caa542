"""The benchmark's plumbing (not its numbers): report layout, pending GPU rows, GPU row logic."""

from __future__ import annotations

import torch

from bnnbench.bench import kernels as bench


def test_bench_writes_report(tmp_path):
    out = tmp_path / "kernels.md"
    assert bench.main(["--plan", "tiny", "--repeats", "2", "--no-gpu", "--out", str(out)]) == 0
    text = out.read_text()
    for needle in ("# Packed kernel benchmarks", "## Machine", "date (UTC)", "cores",
                   "--plan tiny", "xnor GEMV (both binary)", "binary-weight GEMV",
                   "multibit GEMV", "binary conv2d", "speedup cold", "speedup warm",
                   "pending (no GPU in this session)", "Compiled-kernel threads: 1 vs 2",
                   "torch threads", "path at 2 threads", "Cold GEMV against the DRAM roofline",
                   "(roofline)", "of the streaming read", "threading layer"):
        assert needle in text, needle
    # one thread-table row per case and torch thread setting; six reads per roofline shape
    plan = bench.PLANS["tiny"]
    n_cases = len(plan["thread_gemm"]) + len(plan["thread_convs"])
    assert text.count("one thread (below threshold)") == n_cases * len(bench.THREAD_TORCH_SETTINGS)
    assert text.count("\n| M=1 N=K=64 | ") == 6 * len(plan["roofline_n"])
    n_pending = text.count("pending (no GPU in this session)")
    assert n_pending >= len(bench.GPU_PLAN)


def test_gpu_rows_logic_with_a_fake_timer():
    """Runs the GPU row code on CPU tensors with a constant timer: every row is produced."""
    calls = []

    def timer(fn):
        fn()
        calls.append(1)
        return 2.0

    plan = bench.PLANS["tiny"]
    written = []
    rows = bench.gpu_rows(plan, torch.device("cpu"), l2=1 << 16, ref_bw=1e10, timer=timer,
                          peers=False, on_row=lambda r: written.append(len(r)))
    assert written == list(range(1, len(rows) + 1))  # the report is rewritten after every row
    n_gemv = len(plan["gpu_gemv_n"]) * len(plan["gpu_gemv_m"])
    assert len(rows) == 2 * n_gemv + len(plan["gpu_gemm_n"])
    assert not [r for r in rows if "failed" in r[6]], rows
    # every row was checked against float64 on the same inputs: exact integers for both-binary
    assert [r[7] for r in rows[:2]] == ["exact", "ok"], rows
    assert rows[-1][7] == "exact", rows  # the GEMM row is checked too (float64 reference here)
    # a constant timer over R rotated weight copies gives 2 ms / R per call: dense bf16 copies
    # of 64x64 (8 KiB) need R = 4 * L2 / 8 KiB = 32, packed ones (512 B) hit the cap of 64
    assert [r[5] for r in rows] == ["2.00x"] * (2 * n_gemv) + ["1.00x"] * len(plan["gpu_gemm_n"])
    assert any("% of HBM" in r[6] for r in rows) and any("T MAC/s" in r[6] for r in rows)


def test_gpu_goal_lines_read_the_rows():
    rows = [["xnor GEMV (both binary)", "M=1 N=K=4096", "b", "10", "2", "5.00x", "40% of HBM",
             "exact"],
            ["xnor GEMV (both binary)", "M=1 N=K=16384", "b", "10", "1", "10.00x", "75% of HBM",
             "exact"],
            ["binary-weight GEMV (bf16 x)", "M=4 N=K=8192", "b", "10", "2", "5.00x", "", "ok"],
            ["gemlite A16W1 (peer, bf16 x)", "M=4 N=K=8192", "b", "10", "1", "10.00x", "", "ok"]]
    text = "\n".join(bench.gpu_goal_lines(rows))
    assert "M=1 N=K=4096: >= 4x bf16: measured 5.00x, **met**" in text
    assert "M=1 N=K=16384: >= 12x bf16: measured 10.00x, **missed**" in text
    assert "M=1 N=K=16384: >= 70% of HBM: measured 75%, **met**" in text
    assert "M=4 N=K=8192: >= 6x bf16: measured 5.00x, **missed**" in text
    assert "faster than gemlite A16W1: 0.50x gemlite's speed, **missed**" in text
