"""The `recipes` table (conf/sweep/recipes.yaml, issue 13): ReActNet plain / + FP init / + KD /
two-stage, rendered from runs laid out as the staged recipes leave them (stage1/ and stage2/
under a recipe directory holding the command's .hydra/), with ReActNet's printed ablation
beside ours and the verdicts on the three claims."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnnbench.recipes import stage_config
from bnnbench.report.__main__ import PUBLISHED, main, sweep_keys, sweep_title
from bnnbench.report.collect import load_published
from bnnbench.record import RunRecord
from tests.test_modern_table import row

POINTS = ("plain", "fp_init", "fp_teacher", "two_stage")
# fake test top-1 per (point, stage) for seeds 0, 1, 2 (stage None: the plain run)
TOP1 = {("plain", None): [80.0, 81.0, 82.0],
        ("fp_init", 1): [95.0, 95.5, 96.0], ("fp_init", 2): [84.0, 85.0, 86.0],
        ("fp_teacher", 1): [95.1, 95.6, 96.1], ("fp_teacher", 2): [81.0, 82.0, 83.0],
        ("two_stage", 1): [90.0, 90.5, 91.0], ("two_stage", 2): [78.0, 79.0, 80.0]}
REACT = "method=reactnet method.binary_weights=true recipe.name="
ROWS = {("plain", None): f"{REACT}-", ("fp_init", 2): f"{REACT}fp_init",
        ("fp_teacher", 2): f"{REACT}fp_teacher", ("two_stage", 2): f"{REACT}two_stage",
        ("two_stage", 1): "method=reactnet method.binary_weights=false recipe.name=two_stage",
        ("fp_init", 1): "method=fp method.binary_weights=- recipe.name=fp_init",
        ("fp_teacher", 1): "method=fp method.binary_weights=- recipe.name=fp_teacher"}


def test_recipes_sweep_is_a_table_over_the_recipe_points():
    assert sweep_keys("recipes") == ["method", "sweep/recipes_point"]
    assert "plain, + FP init" in sweep_title("recipes")
    # ReActNet's Table 2 prints the distributional loss's ablation (61.1 -> 62.5); Bi-Real's and
    # Real-to-Binary's papers print no warm-start-vs-scratch or one-vs-two-stage numbers
    published = load_published(PUBLISHED, "recipes")
    assert {key: p.top1 for key, p in published.items()} == {
        f"{REACT}-": 61.1, f"{REACT}fp_teacher": 62.5}
    assert all("Table 2" in p.setting for p in published.values())


@pytest.mark.parametrize("point", POINTS)
def test_each_point_composes_to_its_recipe(make_cfg, point):
    cfg = make_cfg(["+sweep=recipes", "+method=reactnet", f"+sweep/recipes_point={point}"])
    assert cfg.trainer.max_epochs == 10 and cfg.method.binary_weights is True
    assert (cfg.get("recipe") or {}).get("name") == (None if point == "plain" else point)


def _record(method: str, seed: int, top1: float) -> RunRecord:
    return RunRecord(method=method, model="mlp", data="mnist5k", seed=seed, test_top1=top1,
                     test_top5=99.0, best_val_top1=top1, num_params=1000, epochs=10,
                     wall_time_s=1.0, epoch_time_s=[0.1] * 10, config_hash="h",
                     curves={"train/loss": [1.0] * 10, "val/top1": [top1] * 10},
                     git_commit="c", device="cpu",
                     extra={"size": {"total_bytes": 100, "fp32_bytes": 3200,
                                     "compression": 32.0}})


def _write_run(run_dir: Path, cfg, record: RunRecord) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    record.write(run_dir)


def _hydra_dir(point_dir: Path, point: str, seed: int) -> None:
    """What the sweep's GuardRunDir writes for a point: its group choices and overrides."""
    hydra = point_dir / ".hydra"
    hydra.mkdir(parents=True)
    choices = {"method": "reactnet", "model": "mlp", "data": "mnist5k", "optimizer": "adam",
               "trainer": "default", "sweep/recipes_point": point}
    (hydra / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": {"runtime": {
        "choices": choices}}}))
    (hydra / "overrides.yaml").write_text(OmegaConf.to_yaml(
        ["+sweep=recipes", "+method=reactnet", f"+sweep/recipes_point={point}",
         f"seed={seed}"]))


def fake_recipe_runs(make_cfg, root: Path) -> None:
    """Each point and seed as the sweep leaves it; the stages' configs from stage_config."""
    for seed in range(3):
        for i, point in enumerate(POINTS):
            cfg = make_cfg(["+sweep=recipes", "+method=reactnet",
                            f"+sweep/recipes_point={point}", f"seed={seed}"])
            point_dir = root / f"{seed * 4 + i}_{point}"
            if point == "plain":
                _write_run(point_dir, cfg, _record("reactnet", seed, TOP1[point, None][seed]))
                _hydra_dir(point_dir, point, seed)
                continue
            _hydra_dir(point_dir, point, seed)
            (point_dir / "recipe.json").write_text(json.dumps({"recipe": point}))
            (point_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg))
            for stage in (1, 2):
                stage_cfg = stage_config(cfg, stage, point_dir / "stage1")
                node = stage_cfg.get("method")  # fp_init's stage 1: FullPrecision(clip)
                method = ("fp" if node is None or str(node.get("_target_")).endswith(
                    "FullPrecision") else "reactnet")
                record = _record(method, seed, TOP1[point, stage][seed])
                if stage_cfg.get("teacher"):  # the distilling stage logs both terms
                    record.curves = {**record.curves, "train/kd": [0.5] * 10,
                                     "train/task": [1.0] * 10}
                _write_run(point_dir / f"stage{stage}", stage_cfg, record)


def test_recipes_table_renders_from_the_stages_runs(make_cfg, tmp_path):
    runs = tmp_path / "runs"
    fake_recipe_runs(make_cfg, runs)
    main(["recipes", "--runs", str(runs), "--out", str(tmp_path / "out"), "--no-plots"])
    text = (tmp_path / "out" / "recipes.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| setting"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    for point_stage, key in ROWS.items():  # one row per recipe stage, three seeds each
        values = TOP1[point_stage]
        cells = dict(zip(columns, row(text, key)))
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert cells["top-1 (%)"] == f"{mean:.2f} ± {std:.2f}" and cells["n"] == "3", key

    def ours(point: str) -> str:
        a, b = TOP1[point, 2], TOP1["plain", None]
        diff = statistics.fmean(a) - statistics.fmean(b)
        se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)
        verdict = ("inconclusive (within 2 standard errors)" if abs(diff) <= 2 * se
                   else "reproduced" if diff > 0 else "not reproduced")
        return [f"{diff:+.2f} ± {se:.2f} (n = 3)", verdict]

    # columns: claim, ours, paper's difference, size vs paper, verdict
    kd = row(text, "+ KD > plain (ReActNet's distributional loss)")
    assert kd[1:] == [ours("fp_teacher")[0], "+1.4", "-", ours("fp_teacher")[1]]
    assert kd[4] == "inconclusive (within 2 standard errors)"  # +1 ± 0.82: within 2 s.e.
    init = row(text, "+ FP init > plain (Bi-Real Net's initialisation; no scratch arm printed)")
    assert init[1:] == [ours("fp_init")[0], "-", "-", "reproduced"]
    two = row(text, "two-stage > plain (ReActNet, Real-to-Binary; no one-stage arm printed)")
    assert two[1:] == [ours("two_stage")[0], "-", "-", "not reproduced"]  # -2 ± 0.82


def test_kd_terms_get_a_panel_of_their_own(make_cfg, tmp_path):
    """The curves plot gains a third panel (train/kd and train/task) when a run distilled."""
    from PIL import Image

    runs = tmp_path / "runs"
    fake_recipe_runs(make_cfg, runs)
    main(["recipes", "--runs", str(runs), "--out", str(tmp_path / "kd")])
    for stage in runs.glob("*_fp_teacher"):  # the same runs without a teacher's curves
        record = RunRecord.read(stage / "stage2")
        record.curves = {k: v for k, v in record.curves.items()
                         if k not in ("train/kd", "train/task")}
        record.write(stage / "stage2")
    main(["recipes", "--runs", str(runs), "--out", str(tmp_path / "plain")])
    with Image.open(tmp_path / "kd" / "recipes_curves.png") as kd, \
            Image.open(tmp_path / "plain" / "recipes_curves.png") as plain:
        assert kd.size[0] - plain.size[0] > 4 * 120  # 5.5 in wider at 120 dpi
