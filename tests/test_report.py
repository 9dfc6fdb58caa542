"""Reports come from runs: settings inferred from resolved configs, seeds aggregated, failed and
unfinished runs listed, plots written; checked against the runs' own metrics.json."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bnnbench.report.__main__ import list_tables, main, sweep_keys
from bnnbench.report.collect import load_run, load_runs, normalize_value, parse_overrides, \
    row_key, swept_keys
from bnnbench.report.plots import pareto_front
from bnnbench.report.render import pivot_frame, runs_frame
from bnnbench.record import RunRecord
from tests.conftest import CONF, FAST, ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(method: str, seed: int, top1: float | None, **fields) -> RunRecord:
    return RunRecord(method=method, model="mlp", data="mnist5k", seed=seed, test_top1=top1,
                     test_top5=None if top1 is None else 99.0, best_val_top1=top1 or 0.0,
                     num_params=10, epochs=2, wall_time_s=1.0, epoch_time_s=[0.5, 0.5],
                     curves={"train/loss": [2.0, 1.0], "val/top1": [50.0, 60.0]},
                     config_hash="h", git_commit="c", device="cpu",
                     extra={"size": {"total_bytes": 1000 if method == "bnn" else 4000,
                                     "fp32_bytes": 4000, "compression": 1.0}}, **fields)


def _run_dir(root: Path, name: str, config_yaml: str, record: RunRecord | None = None,
             metrics_text: str | None = None) -> Path:
    """A run directory as bnnbench leaves it: run.json, config_resolved.yaml, metrics.json."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    (run_dir / "config_resolved.yaml").write_text(config_yaml)
    if record is not None:
        record.write(run_dir)
    if metrics_text is not None:
        (run_dir / "metrics.json").write_text(metrics_text)
    return run_dir


def test_every_sweep_file_is_a_table():
    assert list_tables() == sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
    assert sweep_keys("tang_table2") == ["optimizer.lr", "method.activation"]
    assert sweep_keys("methods") == ["method"]


@pytest.mark.parametrize("a,b", [("1e-2", "0.01"), (0.01, "1e-2"), ("True", True), (3, "3.0")])
def test_values_compare_as_values(a, b):
    assert normalize_value(a) == normalize_value(b)


def test_override_normalization_matches_published_keys():
    settings = parse_overrides(["+method=tang", "optimizer.lr=1e-4", "method.activation=prelu"])
    assert row_key(settings, ["optimizer.lr", "method.activation"]) == \
        "optimizer.lr=0.0001 method.activation=prelu"


def test_swept_settings_come_from_resolved_configs(tmp_path):
    """1e-2 and 0.01 in two runs' YAML are one setting; what a setting determines (the
    method's own knobs and optimizer) is not another; seeds are never a setting."""
    for i, (lr, act, seed) in enumerate([("1e-2", "relu", 0), ("0.01", "relu", 1),
                                         ("1e-4", "relu", 0), ("0.0001", "prelu", 0)]):
        _run_dir(tmp_path, f"{i}", f"seed: {seed}\noptimizer:\n  lr: {lr}\n"
                 f"method:\n  activation: {act}\n  fp_last: true\nlogger:\n  save_dir: /x/{i}\n",
                 _record("tang", seed, 50.0 + i))
    runs = load_runs([tmp_path])
    assert sorted(swept_keys(runs)) == ["method.activation", "optimizer.lr"]
    # the order a sweep names its keys in is the columns' order
    assert swept_keys(runs, ["optimizer.lr"]) == ["optimizer.lr", "method.activation"]
    assert sorted({row_key({k: r.setting(k) for k in ["optimizer.lr"]}, ["optimizer.lr"])
                   for r in runs}) == ["optimizer.lr=0.0001", "optimizer.lr=0.01"]
    # a methods sweep: each method brings its own lr and knobs, only `method` is swept
    methods = tmp_path / "methods"
    for i, (method, lr) in enumerate([("bnn", 0.003), ("bnn", 0.003), ("tang", 0.0001)]):
        _run_dir(methods, f"{i}", f"seed: {i}\noptimizer:\n  lr: {lr}\nmethod:\n  "
                 f"_target_: {method}\n", _record(method, i, 50.0))
    assert swept_keys(load_runs([methods])) == ["method"]


def test_run_statuses_and_malformed_metrics(tmp_path, capsys):
    config = "seed: 0\n"
    _run_dir(tmp_path, "ok", config, _record("bnn", 0, 90.0))
    _run_dir(tmp_path, "failed", config,
             _record("bnn", 1, None, status="failed", error="CUDA out of memory"))
    _run_dir(tmp_path, "diverged", config,
             _record("bnn", 2, None, status="diverged", error="loss is nan at epoch 3"))
    _run_dir(tmp_path, "killed", config)
    _run_dir(tmp_path, "broken", config, metrics_text='{"method": ')
    assert load_run(tmp_path / "broken") is None
    assert f"{tmp_path / 'broken' / 'metrics.json'} is malformed" in capsys.readouterr().err
    got = {r.path.name: (r.status, r.error) for r in load_runs([tmp_path])}
    assert got == {"ok": ("finished", None), "failed": ("failed", "CUDA out of memory"),
                   "diverged": ("diverged", "loss is nan at epoch 3"),
                   "killed": ("unfinished", "no metrics.json: stopped before the end "
                                            "(killed, crashed or refused)")}


@pytest.mark.parametrize("sizes,accuracies,front", [
    ([1, 2, 3], [50, 60, 70], [0, 1, 2]),     # each larger one is more accurate
    ([1, 2, 3], [70, 60, 80], [0, 2]),        # 2 is larger and worse than 1
    ([1, 1, 2], [60, 70, 65], [1]),           # same size: the more accurate one
    ([4, 1], [90, 90], [1]),                  # same accuracy: the smaller one
])
def test_pareto_front(sizes, accuracies, front):
    assert pareto_front(sizes, accuracies) == front


def test_report_of_synthetic_runs_lists_every_run(tmp_path):
    """Mean and std against statistics, failed runs in the list, mixed scales said."""
    for seed, top1 in enumerate([90.0, 92.0, 97.0]):
        _run_dir(tmp_path / "runs", f"bnn{seed}", f"seed: {seed}\n", _record("bnn", seed, top1))
    _run_dir(tmp_path / "runs", "fp0", "seed: 0\n", _record("fp", 0, 98.0))
    _run_dir(tmp_path / "runs", "fp1", "seed: 1\n",
             _record("fp", 1, None, status="failed", error="disk full"))
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plots"])
    text = (tmp_path / "out" / "report.md").read_text()
    mean, std = statistics.fmean([90, 92, 97]), statistics.stdev([90, 92, 97])
    line = next(line for line in text.splitlines() if line.startswith("| method=bnn "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["method=bnn", f"{mean:.2f} ± {std:.2f}", "99.00 ± 0.00", "3", "0,1,2"]
    line = next(line for line in text.splitlines() if line.startswith("| method=fp "))
    assert [c.strip() for c in line.strip("|").split("|")][1:4] == ["98.00", "99.00", "1"]
    assert "mixed scales" not in text
    assert "## Runs that did not finish" in text and "disk full" in text
    with open(tmp_path / "out" / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"finished", "failed"}
    assert "\\begin{tabular}" in (tmp_path / "out" / "report.tex").read_text()


def test_seconds_per_epoch_is_each_runs_median_then_the_seeds_mean(tmp_path):
    """A run's first epoch pays one-off warm-ups (9 s here): its median epoch time (2 s) is the
    run's s / epoch, not the mean (4 s); the table then averages the seeds: (2 + 3) / 2."""
    for seed, times in enumerate([[9.0, 1.0, 2.0], [3.0, 3.0, 3.0]]):
        record = dataclasses.replace(_record("bnn", seed, 90.0), epoch_time_s=times, epochs=3)
        _run_dir(tmp_path / "runs", f"bnn{seed}", f"seed: {seed}\n", record)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plots"])
    with open(tmp_path / "out" / "report.csv") as handle:
        assert sorted(float(r["s_per_epoch"]) for r in csv.DictReader(handle)) == [2.0, 3.0]
    header, _, line = (ln for ln in (tmp_path / "out" / "report.md").read_text().splitlines()
                       if ln.startswith("| setting") or ln.startswith("|:") or
                       ln.startswith("| method=bnn "))
    cells = dict(zip((c.strip() for c in header.strip("|").split("|")),
                     (c.strip() for c in line.strip("|").split("|"))))
    assert cells["s / epoch"] == "2.5"


def test_unknown_target_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["nosuch"])
    err = capsys.readouterr().err
    assert "'nosuch' is neither a directory nor a table" in err and "methods" in err


@pytest.mark.slow
def test_adhoc_sweep_through_both_clis(tmp_path):
    """Done-when of issue 15: 2 methods x 2 seeds, 1 epoch, through `python -m bnnbench -m`
    (whose callback renders the sweep) and `python -m bnnbench.report <dir>`; a run that fails
    is listed; CSV values are each run's metrics.json; mean and std are right; PNGs are PNGs."""
    sweep = tmp_path / "sweep"
    cli = [sys.executable, "-m", "bnnbench"]
    done = subprocess.run([*cli, "-m", "+method=bnn,xnor", "seed=0,1", *FAST,
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # the multirun ended with its report: the table on the terminal, the files in <sweep>/report
    assert "| method=xnor" in done.stdout and (sweep / "report" / "report.md").is_file()
    # a run that fails (an ABC-Net with 0 bases is refused after the run dir was claimed)
    failed = subprocess.run([*cli, "+method=abcnet", "method.weight_bases=0", *FAST,
                             f"hydra.run.dir={sweep}/failed"], cwd=ROOT, capture_output=True,
                            text=True)
    assert failed.returncode != 0

    out = tmp_path / "out"
    main([str(sweep), "--out", str(out)])
    with open(out / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    finished = [r for r in rows if r["status"] == "finished"]
    assert len(rows) == 5 and len(finished) == 4
    for row in finished:  # every number is the run's own
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["test_top1"]) == metrics["test_top1"]
        assert float(row["test_top5"]) == metrics["test_top5"]
        assert int(row["seed"]) == metrics["seed"] and row["method"] == metrics["method"]
        assert int(row["size_bytes"]) == metrics["extra"]["size"]["total_bytes"]
    (bad,) = [r for r in rows if r["status"] != "finished"]
    assert bad["setting"] == "method=abcnet" and bad["status"] == "unfinished"
    text = (out / "report.md").read_text()
    assert "## Runs that did not finish" in text and "method=abcnet" in text
    for method in ("bnn", "xnor"):
        top1 = [float(r["test_top1"]) for r in finished if r["method"] == method]
        cell = f"{statistics.fmean(top1):.2f} ± {statistics.stdev(top1):.2f}"
        line = next(line for line in text.splitlines() if line.startswith(f"| method={method}"))
        assert cell in line and "|   2 | 0,1 " in line
    for png in ("report_size.png", "report_curves.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(out / png) as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200
    # rerendering is idempotent
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    main([str(sweep), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_named_table_runs_its_sweep_with_verdicts(tmp_path):
    main(["tang_table5", "--run", "--runs-root", str(tmp_path / "multirun"),
          "--out", str(tmp_path / "reports"), "--", *FAST, "seed=0,1"])
    text = (tmp_path / "reports" / "tang_table5.md").read_text()
    # the paper's claim, tested on these runs: our difference over 2 seeds vs the paper's +6.5
    claim = next(line for line in text.splitlines() if line.startswith("| m = 2 > m = 1"))
    assert "(n = 2)" in claim and "| +6.5 |" in claim
    assert "inconclusive (fewer than 3 seeds)" in claim
    assert "python -m bnnbench.report tang_table5 --run" in text
    assert "mnist5k" in text and "epochs: 1" in text
    # Tang Table 5's printed numbers, in their own column group, on the rows they belong to
    assert "paper (ImageNet, NIN) top-1" in text
    line = next(line for line in text.splitlines()
                if line.startswith("| method.activation_bits=2"))
    assert "45.8" in line
    with open(tmp_path / "reports" / "tang_table5.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["setting"], r["seed"]) for r in rows) == [
        ("method.activation_bits=1", "0"), ("method.activation_bits=1", "1"),
        ("method.activation_bits=2", "0"), ("method.activation_bits=2", "1")]
    assert all(0 <= float(r["test_top1"]) <= 100 for r in rows)
    # the sweep's own callback report was switched off: this command renders it
    assert not list((tmp_path / "multirun").rglob("report/*.md"))


def test_two_settings_pivot_into_a_grid(tmp_path):
    """ABC-Net's M x N: rows M, columns N, numeric order, mean ± std of each cell's seeds."""
    top1 = {(1, 1): [40.0, 42.0], (1, 5): [50.0, 50.0], (5, 1): [60.0, 64.0], (5, 5): [70.0]}
    for (m, n), values in top1.items():
        for seed, value in enumerate(values):
            _run_dir(tmp_path, f"m{m}n{n}s{seed}", f"seed: {seed}\nmethod:\n  weight_bases: {m}"
                     f"\n  activation_bases: {n}\n", _record("abcnet", seed, value))
    runs = load_runs([tmp_path])
    keys = swept_keys(runs, ["method.weight_bases", "method.activation_bases"])
    grid = pivot_frame(runs_frame(runs, keys), keys)
    assert list(grid.index) == ["1", "5"] and list(grid.columns) == ["1", "5"]
    assert grid.loc["1", "1"] == f"41.00 ± {statistics.stdev([40, 42]):.2f}"
    assert grid.loc["5", "1"] == f"62.00 ± {statistics.stdev([60, 64]):.2f}"
    assert grid.loc["5", "5"] == "70.00"


def test_callback_never_fails_a_finished_sweep(tmp_path, capsys):
    """A sweep whose report cannot be rendered (here: no run at all) still ends normally, with
    one line naming the command to retry."""
    from omegaconf import OmegaConf

    from bnnbench.report.callback import RenderReport

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}})
    RenderReport().on_multirun_end(config=config)
    err = capsys.readouterr().err
    assert "the sweep's report was not written (no run under" in err
    assert f"python -m bnnbench.report {tmp_path / 'empty'}" in err


def test_named_table_renders_a_sweep_whose_point_failed(tmp_path, monkeypatch, capsys):
    """A sweep exits 1 when one point failed: ``--run`` still renders, listing that point; a
    sweep that never started is one line."""
    import bnnbench.report.__main__ as report_main

    def fake_sweep(cmd, **_):
        sweep_dir = Path(next(c for c in cmd if c.startswith("hydra.sweep.dir=")).split("=")[1])
        _run_dir(sweep_dir, "0", "method:\n  activation_bits: 1\nseed: 0\n",
                 _record("tang", 0, 80.0))
        _run_dir(sweep_dir, "1", "method:\n  activation_bits: 2\nseed: 0\n",
                 _record("tang", 0, None, status="failed", error="loss went nan"))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(report_main.subprocess, "run", fake_sweep)
    main(["tang_table5", "--run", "--runs-root", str(tmp_path / "multirun"), "--no-plots",
          "--out", str(tmp_path / "reports")])
    text = (tmp_path / "reports" / "tang_table5.md").read_text()
    assert "## Runs that did not finish" in text and "loss went nan" in text
    assert "exited with code 1" in capsys.readouterr().out

    monkeypatch.setattr(report_main.subprocess, "run",
                        lambda cmd, **_: subprocess.CompletedProcess(cmd, 2))
    with pytest.raises(SystemExit):
        main(["tang_table5", "--run", "--runs-root", str(tmp_path / "empty"),
              "--out", str(tmp_path / "reports2")])
    err = capsys.readouterr().err
    assert "exited with code 2 before writing" in err and "Traceback" not in err


# ------------------------------------------------------------------ named tables from fake runs
def _sweep_points(table: str) -> list[tuple[str | None, dict[str, str], int]]:
    """Every (method choice, {dotted key: value}, seed) a named table's sweep file launches."""
    import itertools

    from omegaconf import OmegaConf

    sweep = OmegaConf.load(CONF / "sweep" / f"{table}.yaml")
    fixed = next((str(v) for d in sweep.get("defaults", []) if not isinstance(d, str)
                  for k, v in d.items() if k == "/method"), None)  # e.g. `- /method: tang`
    params = {k.lstrip("+"): str(v).split(",") for k, v in sweep.hydra.sweeper.params.items()}
    seeds = [int(s) for s in params.pop("seed")]
    points = []
    for values in itertools.product(*params.values()):
        setting = dict(zip(params, values))
        method = setting.pop("method", fixed)
        for key in [k for k in setting if k.startswith("sweep/")]:  # a nested group's option
            option = OmegaConf.load(CONF / key / f"{setting.pop(key)}.yaml")
            method = next((v for d in option.get("defaults", []) if not isinstance(d, str)
                           for k, v in d.items() if k == "/method"), method)
        points += [(method, setting, seed) for seed in seeds]
    return points


def _fake_flips(method: str, lr: float, seed: int) -> dict[str, list[float]]:
    """Flip curves shaped like Tang's Figure 2: at lr 1e-2 BNN flips 1000x as many signs as
    full precision, at lr 1e-4 as many as full precision at 1e-2; falling over three epochs;
    4 layers, as the MLP has."""
    scale = 0.1 * (lr / 1e-2) ** 1.5 if method != "fp" else 1e-2 * lr
    return {f"flip_ratio/net.{i}": [min(0.5, scale * (1 + 0.1 * seed) / (e + 1))
                                    for e in range(3)] for i in (1, 4, 7, 10)}


def _fake_table_runs(table: str, root: Path) -> int:
    """Fake finished runs of every point of ``table``'s sweep (top-1 from the setting's hash)."""
    from omegaconf import OmegaConf

    points = _sweep_points(table)
    for i, (method, setting, seed) in enumerate(points):
        tree = OmegaConf.to_container(OmegaConf.from_dotlist(
            [f"{k}={v}" for k, v in setting.items()]))
        tree["seed"] = seed
        top1 = 80.0 + (sum(map(ord, str(sorted(setting.items())) + str(method))) % 15) + seed
        record = _record(method or "fp", seed, top1)
        record.overrides = [f"+sweep={table}"]
        if "optimizer.lr" in setting and table == "tang_fig2":
            record.curves = {**record.curves,
                             **_fake_flips(method, float(setting["optimizer.lr"]), seed)}
        _run_dir(root, f"{i}_{method}", OmegaConf.to_yaml(tree), record)
    return len(points)


@pytest.mark.parametrize("table", [t for t in list_tables()])
def test_every_named_table_rerenders_from_its_runs(tmp_path, table):
    """`python -m bnnbench.report <table> --runs DIR` renders each table's sweep (one fake run
    per point and seed): every run in the CSV, the table's rows, its plots as real PNGs."""
    count = _fake_table_runs(table, tmp_path / "runs")
    out = tmp_path / "out"
    main([table, "--runs", str(tmp_path / "runs"), "--out", str(out)])
    text = (out / f"{table}.md").read_text()
    assert f"python -m bnnbench.report {table} --runs {tmp_path / 'runs'}" in text
    with open(out / f"{table}.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == count and {r["status"] for r in rows} == {"finished"}
    settings = {r["setting"] for r in rows}
    assert all(f"| {s} " in text for s in settings)
    pngs = ["size", "curves"] + (["flip_ratio"] if table == "tang_fig2" else [])
    for kind in pngs:
        with Image.open(out / f"{table}_{kind}.png") as image:
            image.verify()
    if table in ("tang_table2", "tang_table3", "tang_table5", "abcnet_grid", "tang_fig2"):
        assert "## The paper's claims at this scale" in text
    # rerendering the same runs gives the same files
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    main([table, "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_tang_fig2_report_from_fake_runs(tmp_path):
    """Figure 2 from runs whose flip curves are known: the per-layer table holds each setting's
    mean over seeds and epochs (in %), the plot is a PNG of one panel per layer, and the
    verdicts follow the shares (BNN ~1000x full precision at 1e-2, close to it at 1e-4)."""
    _fake_table_runs("tang_fig2", tmp_path / "runs")
    out = tmp_path / "out"
    main(["tang_fig2", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    text = (out / "tang_fig2.md").read_text()
    flips = text.split("## Latent-weight sign flips")[1]
    line = next(line for line in flips.splitlines()
                if line.startswith("| optimizer.lr=0.01 method=tang "))
    seeds = [statistics.fmean(_fake_flips("tang", 0.01, s)["flip_ratio/net.1"]) for s in range(3)]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["3", f"{100 * statistics.fmean(seeds):.3g} ± "
                               f"{100 * statistics.stdev(seeds):.2g}"]
    header = next(line for line in flips.splitlines() if line.startswith("| setting "))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == \
        ["net.1", "net.4", "net.7", "net.10"]  # network order, not string order
    verdicts = {line.split("|")[1].strip(): line.rstrip(" |").split("|")[-1].strip()
                for line in text.splitlines() if "(n = 3)" in line and "flip" in line.lower()}
    assert verdicts == {
        "at lr 1e-2, BNN flips far more signs than full precision": "reproduced",
        "BNN flips fewer signs at lr 1e-4 than at lr 1e-2": "reproduced",
        "BNN at lr 1e-4 flips about as many signs as full precision at lr 1e-2": "reproduced"}
    data = (out / "tang_fig2_flip_ratio.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(out / "tang_fig2_flip_ratio.png") as image:
        assert image.size[0] > 600 and image.size[1] > 300


def test_report_cli_imports_nothing_heavy():
    """`python -m bnnbench.report --help` (and reading runs) loads no torch, Lightning, pandas
    or matplotlib: those load when a report is built."""
    code = ("import sys, runpy; sys.argv = ['bnnbench.report', '--help']\n"
            "try:\n    runpy.run_module('bnnbench.report', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import bnnbench.report.collect, bnnbench.report.verdicts, bnnbench.summary\n"
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'pandas', "
            "'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: python -m bnnbench.report" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("setting, label", [
    ("method=bnn", "bnn"),
    ("+method=xnor", "xnor"),
    ("method.activation_bits=1", "method.activation_bits=1"),
    ("method=bnn optimizer.lr=0.01", "method=bnn optimizer.lr=0.01"),
])
def test_plot_legend_names_the_knob_unless_it_is_the_method(setting, label):
    from bnnbench.report.plots import _label

    assert _label(setting) == label
