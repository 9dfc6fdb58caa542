"""The benchmark's plumbing (not its numbers): report layout, pending GPU rows, GPU row logic."""

from __future__ import annotations

import pytest
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
    n_small = len(plan["gpu_gemv_small_n"])
    n_fused = len(plan["gpu_fused"])
    assert len(rows) == 2 * n_gemv + n_small + n_fused + len(plan["gpu_gemm_n"])
    assert not [r for r in rows if "failed" in r[6]], rows
    # every row was checked against float64 on the same inputs: exact integers for both-binary
    assert [r[7] for r in rows[:2]] == ["exact", "ok"], rows
    assert rows[-1][7] == "exact", rows  # the GEMM row is checked too (float64 reference here)
    # a constant timer over R rotated weight copies gives 2 ms / R per call: dense bf16 copies
    # of 64x64 (8 KiB) need R = 4 * L2 / 8 KiB = 32, packed ones (512 B) hit the cap of 64
    assert [r[7] for r in rows[2 * n_gemv:2 * n_gemv + n_small]] == ["exact"] * n_small, rows
    # the fused BN -> sign pairs: the second layer reads the same bits, gives the same output
    fused = rows[2 * n_gemv + n_small:2 * n_gemv + n_small + n_fused]
    assert [(r[0].split(" (")[0], r[7]) for r in fused] == [("fused BN -> sign pair", "exact")
                                                           ] * n_fused, fused
    assert [r[5] for r in rows] == (["2.00x"] * (2 * n_gemv + n_small)
                                    + ["1.00x"] * (n_fused + len(plan["gpu_gemm_n"])))
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


def test_gpu_script_skips_its_gpu_steps_cleanly_without_a_gpu(tmp_path, monkeypatch):
    """``python -m bnnbench.bench.gpu`` on a machine without CUDA: every GPU step is reported
    skipped with the reason, nothing fails, and the result bundle is still written."""
    import tarfile

    from bnnbench.bench import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "run_step", lambda *a: pytest.fail("a step ran without a GPU"))
    assert gpu.main(["--out", str(tmp_path), "--skip", "versions"]) == 0
    with tarfile.open(tmp_path / "gpu_results.tar.gz") as tar:
        summary = tar.extractfile("gpu_results/summary.txt").read().decode()
    gpu_steps = [name for name, _, _ in gpu.STEPS if name not in gpu.CPU_STEPS]
    assert gpu_steps and all(f"{name}: skipped (no CUDA GPU here)" in summary
                             for name in gpu_steps), summary
    assert "versions: skipped" in summary


@pytest.mark.parametrize("argv", [["--plan", "tiny"], ["--gpu-only", "--plan", "gpu_short",
                                                       "--no-peers"]])
def test_report_header_names_a_command_that_exists(argv):
    """The reports' "Written by" line must name a runnable module (the GPU report once named
    ``bnnbench.kernels.bench``, which had moved) with the options that shaped the run."""
    import importlib.util
    import re

    parsed = {"plan": None, "quick": False, "threads": 0, "gpu_only": False, "no_peers": False}
    for flag, value in zip(argv, argv[1:] + [""]):
        if flag == "--plan":
            parsed["plan"] = value
        elif flag.startswith("--"):
            parsed[flag[2:].replace("-", "_")] = True
    import argparse

    cmd = bench.report_command(argparse.Namespace(**parsed))
    module = re.match(r"python -m (\S+)", cmd).group(1)
    assert module == "bnnbench.bench.kernels"
    assert importlib.util.find_spec(module) is not None
    assert all(a in cmd.split() for a in argv), cmd


def test_gemlite_row_is_skipped_with_its_reason(monkeypatch):
    """Without gemlite the peer gets one row saying why, instead of silently no row."""
    monkeypatch.setattr(bench, "gemlite_missing", lambda: "gemlite not importable (test)")
    plan = {**bench.PLANS["tiny"], "gpu_gemv_small_n": []}
    rows = bench.gpu_rows(plan, torch.device("cpu"), l2=1 << 16, ref_bw=1e10,
                          timer=lambda fn: (fn(), 1.0)[1], peers=True, sections=("gemv",))
    skipped = [r for r in rows if r[0].startswith("gemlite")]
    assert skipped == [["gemlite A16W1 (peer, bf16 x)", "all", "-", "-", "-", "-",
                        "skipped: gemlite not importable (test)", "-"]]


def test_gemlite_diagnosis_names_the_misreading():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 40, generator=g), torch.randn(40, 40, generator=g)
    sw, s = torch.where(w < 0, -1.0, 1.0).double(), w.abs().mean(1)
    ref = (x.double() @ sw.T) * s.double()
    assert "matches weights transposed" in bench.gemlite_diagnosis(
        (x.double() @ sw) * s.double(), x, sw, s)
    assert "matches -ref (signs flipped)" in bench.gemlite_diagnosis(-ref, x, sw, s)
    assert "matches none of" in bench.gemlite_diagnosis(ref + 100.0, x, sw, s)
