"""The packed-inference benchmark measures a packed model that predicts what the trained one does."""

from __future__ import annotations

from bnnbench.bench.packed_inference import measure


def test_packed_inference_bench_compares_equal_predictions(tmp_path):
    rows = measure(["model=mlp", "model.hidden_features=64"], (1, 5), repeats=1, workdir=tmp_path)
    assert [r[0] for r in rows] == [1, 5]
    assert all(agree == 100.0 for *_, agree in rows)  # BinaryNet: integer-exact
    assert all(ms > 0 for _, *times, _ in rows for ms in times)


def test_device_measurement_plumbing_on_cpu(tmp_path):
    """The GPU rows' code path, run on CPU in fp32 with a wall-clock timer: packed == trained."""
    import torch

    from bnnbench.bench.packed_inference import GEOMETRY, measure_device, median_ms

    rows = measure_device(["model=resnet18"], (1, 3), tmp_path, torch.device("cpu"),
                          torch.float32, GEOMETRY, lambda fn: median_ms(fn, 1),
                          eager_timer=lambda fn: median_ms(fn, 1))
    assert [r["batch"] for r in rows] == [1, 3]
    assert all(r["agree"] == 100.0 for r in rows)
    assert all(r[k] > 0 for r in rows for k in ("fp_ms", "packed_ms", "fp_eager_ms",
                                                "packed_eager_ms", "unfused_ms"))
    # ResNet-18's 8 BasicBlocks each fuse conv1 -> bn1 -> act1 -> conv2; same logits unfused
    assert all(r["fused_pairs"] == 8 and r["fused_same"] for r in rows)


def test_gpu_rows_pending_without_cuda(tmp_path, monkeypatch):
    import torch

    from bnnbench.bench import packed_inference as P

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows, device, profiles = P.gpu_lines(tmp_path)
    assert profiles == []
    assert device.startswith("none")
    assert len(rows) == sum(len(b) for _, _, b in P.GPU_CASES)
    assert all(P.PENDING in r for r in rows)


def test_e2e_goal_verdicts():
    from bnnbench.bench.packed_inference import goal_verdict

    assert goal_verdict(1, 2.5).endswith("met") and goal_verdict(1, 1.9).endswith("missed")
    assert goal_verdict(256, 1.3).endswith("met") and goal_verdict(256, 1.29).endswith("missed")
    assert goal_verdict(8, 0.1) == "measured"


def test_training_cost_bench_times_every_requested_method(tmp_path):
    from bnnbench.bench import training_cost

    out = tmp_path / "training_cost.md"
    assert training_cost.main(["--plan", "tiny", "--warmup", "1", "--steps", "1",
                               "--methods", "bnn", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert [r.split(" | ")[1] for r in rows] == ["fp", "bnn"]  # fp always runs: the ratio's base
    assert all(r.endswith("| measured |") for r in rows), rows
    assert rows[0].split(" | ")[5] == "1.00"


def test_memory_rows_measure_fresh_processes(tmp_path):
    """The memory section's plumbing: two child processes per case, one row with a verdict."""
    from bnnbench.bench.packed_inference import GEOMETRY, memory_rows

    (row,) = memory_rows(tmp_path, [("tiny mlp", ["model=mlp", "model.hidden_features=64"],
                                     GEOMETRY, 2)])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "tiny mlp" and cells[1] == "2"
    assert float(cells[2]) > 0 and float(cells[3]) > 0  # file and float parameter MiB
    assert cells[-1] in ("met", "missed")


def test_gpu_script_logs_every_step_and_bundles_what_ran(tmp_path, monkeypatch):
    """The GPU script's plumbing on CPU: a step that fails is logged and reported, skipped steps
    are listed, and the tarball holds the summary and the step's log."""
    import sys
    import tarfile

    from bnnbench.bench import gpu

    monkeypatch.setattr(gpu, "STEPS", (
        ("fails", [sys.executable, "-c", "import sys; print('step ran'); sys.exit(3)"], 30),
        ("skipped", [sys.executable, "-c", "print('never')"], 30),
    ))
    monkeypatch.setattr(gpu, "CPU_STEPS", ("fails", "skipped"))  # they run without a GPU
    assert gpu.main(["--out", str(tmp_path), "--skip", "skipped", "--budget", "60"]) == 0
    with tarfile.open(tmp_path / "gpu_results.tar.gz") as tar:
        names = set(tar.getnames())
        summary = tar.extractfile("gpu_results/summary.txt").read().decode()
        log = tar.extractfile("gpu_results/fails.log").read().decode()
    assert "gpu_results/fails.log" in names and "step ran" in log
    assert "fails: exit 3" in summary and "skipped: skipped" in summary
