"""The `modern` table (conf/sweep/modern.yaml, issue 13) renders from runs: its rows, the papers'
numbers in their own column groups (ReActNet-A's for ReActNet, ResNet-18's for the others, the
ResNet rows when the hosts are swept too) and the verdicts on the papers' orderings."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from bnnbench.report.__main__ import PUBLISHED, main, sweep_keys, sweep_title
from bnnbench.report.collect import load_published
from bnnbench.record import RunRecord
from tests.test_report import _run_dir

# test top-1 of three fake seeds per method
TOP1 = {"bnn": [65.0, 66.0, 67.0], "xnor": [60.0, 61.0, 62.0], "xnorpp": [70.0, 70.5, 71.0],
        "bireal": [75.0, 76.0, 77.0], "reactnet": [80.0, 81.0, 82.0]}


def fake_run(root: Path, method: str, model: str, seed: int, top1: float) -> None:
    record = RunRecord(method=method, model=model, data="mnist5k", seed=seed, test_top1=top1,
                       test_top5=99.0, best_val_top1=top1, num_params=1000, epochs=3,
                       wall_time_s=1.0, epoch_time_s=[0.3, 0.3, 0.4], curves={},
                       config_hash="h", git_commit="c", device="cpu",
                       extra={"size": {"total_bytes": 100, "fp32_bytes": 3200,
                                       "compression": 32.0}})
    _run_dir(root, f"{method}_{model}_{seed}", f"seed: {seed}\n", record)


def row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {key} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_modern_sweep_is_a_table_over_methods():
    assert sweep_keys("modern") == ["method"]
    assert "ReActNet-A at width 1/4" in sweep_title("modern")
    published = load_published(PUBLISHED, "modern")
    assert {k for k in published if " " not in k} == {f"method={m}" for m in TOP1}


def test_modern_table_renders_from_fake_runs(tmp_path):
    runs = tmp_path / "runs"
    for method, values in TOP1.items():
        for seed, top1 in enumerate(values):
            fake_run(runs, method, "reactnet_a", seed, top1)
    main(["modern", "--runs", str(runs), "--out", str(tmp_path / "out"), "--no-plots"])
    text = (tmp_path / "out" / "modern.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| setting"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    for method, values in TOP1.items():
        cells = row(text, f"method={method}")
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert cells[1] == f"{mean:.2f} ± {std:.2f}" and cells[3] == "3"
    # ReActNet's printed number is ReActNet-A's, in its own group; the others' are ResNet-18's
    react = dict(zip(columns, row(text, "method=reactnet")))
    assert react["paper (ImageNet, ReActNet-A) top-1"] == "69.4"
    assert react["paper (ImageNet, ResNet-18) top-1"] == ""
    bireal = dict(zip(columns, row(text, "method=bireal")))
    assert bireal["paper (ImageNet, ResNet-18) top-1"] == "56.4"
    assert bireal["paper (ImageNet, ReActNet-A) top-1"] == ""

    def verdict(better: str, worse: str) -> tuple[str, str]:
        a, b = TOP1[better], TOP1[worse]
        diff = statistics.fmean(a) - statistics.fmean(b)
        se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)
        return f"{diff:+.2f} ± {se:.2f} (n = 3)", ("reproduced" if diff > 0 else
                                                    "not reproduced")

    claims = {"ReActNet > Bi-Real Net": ("reactnet", "bireal", "+13.0"),
              "Bi-Real Net > XNOR-Net": ("bireal", "xnor", "+5.2"),
              "XNOR-Net++ > XNOR-Net": ("xnorpp", "xnor", "+5.9"),
              "XNOR-Net > BNN": ("xnor", "bnn", "+9.0")}
    for claim, (better, worse, paper) in claims.items():
        ours, want = verdict(better, worse)
        cells = row(text, claim)
        assert [cells[1], cells[2], cells[4]] == [ours, paper, want]
        diff = statistics.fmean(TOP1[better]) - statistics.fmean(TOP1[worse])
        size = "smaller" if abs(diff) < abs(float(paper)) else "larger"  # MNIST gaps vs ImageNet
        assert cells[3] in ("opposite sign", f"{size}: {diff / float(paper):.2g}x the paper's"), \
            cells[3]


def test_modern_table_over_the_papers_hosts_shows_their_resnet_rows(tmp_path):
    """Rerun over model=resnet18,resnet34: rows keyed by method and model, Bi-Real-18/34 and
    ReActNet on ResNet-18 beside them."""
    runs = tmp_path / "runs"
    for method in ("bireal", "reactnet"):
        for model in ("resnet18", "resnet34"):
            for seed in range(2):
                fake_run(runs, method, model, seed, 70.0 + seed)
    main(["modern", "--runs", str(runs), "--out", str(tmp_path / "out"), "--no-plots"])
    text = (tmp_path / "out" / "modern.md").read_text()
    assert "62.2" in row(text, "method=bireal model=resnet34")
    assert "56.4" in row(text, "method=bireal model=resnet18")
    assert "65.5" in row(text, "method=reactnet model=resnet18")
    assert "| ReActNet > Bi-Real Net | rows not in these runs |" in text


@pytest.mark.parametrize("key", ["method=reactnet", "method=reactnet model=reactnet_a"])
def test_reactnet_a_number_is_tagged_check(key):
    paper = load_published(PUBLISHED, "modern")[key]
    assert (paper.top1, paper.top5, paper.tag) == (69.4, 88.6, "check")
    assert "ReActNet-A" in paper.setting
