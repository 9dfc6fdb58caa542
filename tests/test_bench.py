"""The packed-inference benchmark measures a packed model that predicts what the trained one does."""

from __future__ import annotations

from bnnbench.bench.packed_inference import measure


def test_packed_inference_bench_compares_equal_predictions(tmp_path):
    rows = measure(["model=mlp", "model.hidden_features=64"], (1, 5), repeats=1, workdir=tmp_path)
    assert [r[0] for r in rows] == [1, 5]
    assert all(same for *_, same in rows)
    assert all(ms > 0 for _, *times, _ in rows for ms in times)
