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
                          torch.float32, GEOMETRY, lambda fn: median_ms(fn, 1))
    assert [r[0] for r in rows] == [1, 3]
    assert all(agree == 100.0 for *_, agree in rows)
    assert all(fp > 0 and packed > 0 for _, fp, packed, _ in rows)


def test_gpu_rows_pending_without_cuda(tmp_path, monkeypatch):
    import torch

    from bnnbench.bench import packed_inference as P

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows, device = P.gpu_lines(tmp_path)
    assert device.startswith("none")
    assert len(rows) == sum(len(b) for _, _, b in P.GPU_CASES)
    assert all(P.PENDING in r for r in rows)
