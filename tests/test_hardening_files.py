"""Run directories, reports and written files under hostile or careless input: two writers racing
for one name, a full disk, config files built to hang or leak a reader, metrics.json values
built to crash an aggregate, cells built to break a table, sweep bookkeeping after tampering.
Each gives one line naming the file (and the file as it was) or the right answer."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from bnnbench.errors import BnnbenchError, call_or_exit
from bnnbench.files import NameTaken, WriteFailed, read_json, read_yaml, write_atomic
from bnnbench.record import RunRecord
from bnnbench.report.__main__ import main as report_main
from bnnbench.report.collect import load_runs
from tests.conftest import FAST, compose_config


def record(**changes) -> RunRecord:
    base = dict(method="bnn", model="mlp", data="mnist5k", seed=0, test_top1=90.0,
                test_top5=99.0, best_val_top1=91.0, num_params=10, epochs=2, wall_time_s=1.0,
                epoch_time_s=[0.5, 0.5], curves={"val/top1": [50.0, 60.0]}, config_hash="h",
                git_commit="c", device="cpu", overrides=["+method=bnn"],
                extra={"size": {"total_bytes": 1000, "fp32_bytes": 4000, "compression": 4.0}})
    return RunRecord(**{**base, **changes})


def run_dir_with(root: Path, name: str, config_yaml: str = "seed: 0\n",
                 rec: RunRecord | None = None, metrics_text: str | None = None) -> Path:
    """A run directory as a run leaves it: run.json, config_resolved.yaml, metrics.json."""
    path = root / name
    path.mkdir(parents=True)
    (path / "run.json").write_text("{}")
    (path / "config_resolved.yaml").write_text(config_yaml)
    if rec is not None:
        rec.write(path)
    if metrics_text is not None:
        (path / "metrics.json").write_text(metrics_text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short BinaryNet MLP run (shared by the export and evaluation tests)."""
    from bnnbench.train import run

    out = tmp_path_factory.mktemp("trained")
    run(compose_config(["+method=bnn", *FAST, "model.hidden_features=32"], out))
    GlobalHydra.instance().clear()
    return out


# ------------------------------------------------------------------ 4: racing for one name
def race(target, monkeypatch, module, name) -> list[object]:
    """Run ``target`` in two threads that both pass ``module.name`` (where the name is chosen)
    before either writes: the race a second process starting a moment later would run."""
    barrier = threading.Barrier(2, timeout=120)
    real = getattr(module, name)

    def chosen_then_wait(*args, **kwargs):
        value = real(*args, **kwargs)
        barrier.wait()
        return value

    monkeypatch.setattr(module, name, chosen_then_wait)
    outcomes: list[object] = [None, None]

    def one(i: int) -> None:
        try:
            outcomes[i] = target()
        except Exception as err:  # noqa: BLE001 - the outcome under test
            outcomes[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


def test_two_exports_racing_for_one_out_one_is_refused(trained, tmp_path, monkeypatch):
    from bnnbench import export
    from bnnbench.packed.format import load_packed

    out = tmp_path / "model.safetensors"
    outcomes = race(lambda: export.export_run(trained, out), monkeypatch, export,
                    "free_path")
    written = [o for o in outcomes if isinstance(o, Path)]
    refused = [o for o in outcomes if isinstance(o, NameTaken)]
    assert written == [out] and len(refused) == 1, outcomes
    assert "\n" not in str(refused[0]) and str(out) in str(refused[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no debris
    assert load_packed(out, kernels="never") is not None  # the one written is whole


def test_two_evaluations_racing_for_eval_json_one_is_refused(trained, tmp_path, monkeypatch):
    from bnnbench import evaluate

    outcomes = race(lambda: evaluate.evaluate_run(trained, out=tmp_path), monkeypatch,
                    evaluate, "result_path")
    written = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if isinstance(o, NameTaken)]
    assert len(written) == 1 and len(refused) == 1, outcomes
    record_, path = written[0]
    assert path == tmp_path / "eval.json" and json.loads(path.read_text()) == record_


def test_a_new_file_never_replaces_one_written_meanwhile(tmp_path):
    """Processes, not threads: the loser of the race for a name keeps nothing and says so."""
    target = tmp_path / "eval.json"
    code = ("import sys, time; from pathlib import Path; from bnnbench.files import "
            "atomic_path\nwith atomic_path(Path(sys.argv[1]), replace=False) as tmp:\n"
            "    tmp.write_text(sys.argv[2]); time.sleep(float(sys.argv[3]))\n")
    slow = subprocess.Popen([sys.executable, "-c", code, str(target), "slow", "3"],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    fast = subprocess.run([sys.executable, "-c", code, str(target), "fast", "0"],
                          capture_output=True, text=True, timeout=120)
    assert fast.returncode == 0, fast.stderr
    assert slow.wait(timeout=120) != 0 and "NameTaken" in slow.stderr.read()
    assert target.read_text() == "fast"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_a_new_file_is_refused_over_an_existing_one_which_stays(tmp_path):
    target = write_atomic(tmp_path / "size.json", "first")
    with pytest.raises(NameTaken, match="nothing was replaced"):
        write_atomic(target, "second", replace=False)
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["size.json"]


# ------------------------------------------------------------------ 10: a full disk
@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """(directory, fill): files made in the directory before ``fill()`` stay; after it, every
    write there fails with ENOSPC. A real 1 MiB tmpfs where this process may mount one (root);
    elsewhere the failure is simulated at fsync (as a filesystem with delayed allocation
    reports a full disk)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True).returncode == 0

    def fill() -> None:
        if mounted:
            fd = os.open(where / ".filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
            finally:
                os.close(fd)
            return
        real = os.fsync

        def no_space(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(where)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd)

        monkeypatch.setattr(os, "fsync", no_space)

    yield where, fill
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def debris(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def assert_one_line_about(err: BaseException, path: Path, kept: bool) -> None:
    text = str(err)
    assert isinstance(err, WriteFailed) and "\n" not in text, text
    assert f"could not write {path} (No space left on device)" in text
    assert ("keeps its previous content" if kept else "was not created") in text
    assert "every file written before it is intact" in text


def test_metrics_json_on_a_full_disk_keeps_the_previous_one(full_disk, capsys):
    where, fill = full_disk
    record(test_top1=50.0).write(where)
    before = (where / "metrics.json").read_text()
    fill()
    with pytest.raises(WriteFailed) as err:
        record(test_top1=60.0).write(where)
    assert_one_line_about(err.value, where / "metrics.json", kept=True)
    assert (where / "metrics.json").read_text() == before and debris(where) == []
    with pytest.raises(SystemExit) as exited:  # on the command line: one line, status 2
        call_or_exit(record().write, where)
    assert exited.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_checkpoint_on_a_full_disk_names_its_run_directory(full_disk):
    import torch

    from bnnbench.train import AtomicCheckpointIO

    where, fill = full_disk
    last = where / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(8)}, last)
    fill()
    with pytest.raises(WriteFailed) as err:
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(100_000)}, last)
    assert_one_line_about(err.value, last, kept=True)
    assert torch.equal(torch.load(last, weights_only=True)["w"], torch.zeros(8))
    assert debris(where) == []


def test_size_and_report_on_a_full_disk(full_disk, tmp_path):
    from bnnbench.report.__main__ import build
    from bnnbench.report.render import write_report
    from bnnbench.size import account, output_path, write_json
    from tests.test_size import small_net

    where, fill = full_disk
    runs = tmp_path / "runs"
    run_dir_with(runs, "a", rec=record())
    report = build([runs], command="test")
    write_report(report, where, plots=False)
    before = {p.name: p.read_bytes() for p in where.iterdir()}
    fill()
    with pytest.raises(WriteFailed) as err:
        write_json(account(small_net(), "deployed"), output_path(where))
    assert_one_line_about(err.value, where / "size.json", kept=False)
    with pytest.raises(WriteFailed) as err:
        write_report(report, where, plots=False)
    assert_one_line_about(err.value, where / "report.md", kept=True)
    assert {p.name: p.read_bytes() for p in where.iterdir() if p.name != ".filler"} == before
    assert debris(where) == []


def test_export_and_eval_json_on_a_full_disk(trained, full_disk):
    from bnnbench.evaluate import evaluate_run
    from bnnbench.export import export_run

    where, fill = full_disk
    fill()
    with pytest.raises(WriteFailed) as err:
        export_run(trained, where)
    assert_one_line_about(err.value, where / "packed.safetensors", kept=False)
    with pytest.raises(WriteFailed) as err:
        evaluate_run(trained, out=where)
    assert_one_line_about(err.value, where / "eval.json", kept=False)
    assert debris(where) == []


def test_a_run_on_a_full_disk_stops_in_one_line_naming_its_checkpoint(tmp_path):
    """End to end on a real small filesystem: the configs fit, the first checkpoint does not.
    The one line names the checkpoint in the run directory (not a temporary file), and what the
    run wrote before it is still there."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs",
                                            str(disk)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (the simulated full disk above runs anywhere)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bnnbench", "+method=bnn", *FAST, "model.hidden_features=32",
             f"hydra.run.dir={disk / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
            timeout=600)
        lines = [x for x in done.stderr.splitlines() if x.startswith("bnnbench: error: ")]
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert len(lines) == 1 and f"could not write {disk / 'run' / 'checkpoints'}/" in lines[0]
        assert ".tmp" not in lines[0] and "No space left on device" in lines[0]
        assert "seed: 0" in (disk / "run" / "config_resolved.yaml").read_text()
        assert debris(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ------------------------------------------------------------------ 8: configs as plain data
BILLION_LAUGHS = "\n".join(
    ["seed: 0", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]) + "\n"
MERGE_BOMB = "\n".join(
    ["seed: 0", "m0: &m0 {x: 1}"]
    + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, 40)]) + "\n"
DOUBLING = "\n".join(["seed: 0", "d0: ha"] + [f"d{i}: ${{d{i - 1}}}${{d{i - 1}}}"
                                               for i in range(1, 60)]) + "\n"


@pytest.mark.parametrize("config, reason", [
    (BILLION_LAUGHS, "YAML aliases"),
    (MERGE_BOMB, "YAML aliases"),
    ("seed: 0\nself: &s [*s]\n", "expands to more than"),
    ("seed: 0\npad: '" + "x" * (17 * 2**20) + "'\n", "is larger than"),
    ("seed: !!python/object/apply:os.system ['true']\n", "is not readable YAML"),
])
def test_a_hostile_config_is_skipped_fast_naming_it(tmp_path, capsys, config, reason):
    run_dir_with(tmp_path, "evil", config, record())
    run_dir_with(tmp_path, "good", "seed: 1\n", record(seed=1))
    start = time.perf_counter()
    runs = load_runs([tmp_path])
    assert time.perf_counter() - start < 10
    assert {r.path.name for r in runs} == {"evil", "good"}  # listed, without its config
    assert next(r for r in runs if r.path.name == "evil").config == {}
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and reason in warning
    assert str(tmp_path / "evil" / "config_resolved.yaml") in warning


def test_interpolations_are_text_and_resolvers_never_run(tmp_path, monkeypatch):
    """``${oc.env:...}`` is not resolved into the report (it would print a secret), a doubling
    chain is not expanded (it would not end), and a whole-value reference to another key
    (an unresolved .hydra/config.yaml) reads that key's value."""
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-secret")
    run_dir_with(tmp_path / "runs", "a", "seed: 0\nnote: ${oc.env:SECRET_TOKEN}\n"
                 "optimizer: {lr: 0.1}\nscheduler: {lr: '${optimizer.lr}'}\n" + DOUBLING,
                 record())
    run_dir_with(tmp_path / "runs", "b", "seed: 0\nnote: plain\noptimizer: {lr: 0.1}\n"
                 "scheduler: {lr: 0.1}\n", record(method="fp"))
    start = time.perf_counter()
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plots"])
    assert time.perf_counter() - start < 60
    runs = {r.path.name: r for r in load_runs([tmp_path / "runs"])}
    assert runs["a"].config["note"] == "${oc.env:SECRET_TOKEN}"
    assert runs["a"].config["scheduler.lr"] == runs["b"].config["scheduler.lr"] == "0.1"
    assert runs["a"].config["d59"] == "${d58}${d58}"
    for suffix in ("md", "csv", "tex"):
        assert "hunter2" not in (tmp_path / "out" / f"report.{suffix}").read_text()


def test_read_helpers_refuse_deep_and_large_files_in_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(BnnbenchError, match="nested too deeply"):
        read_json(deep)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" * 10)
    with pytest.raises(BnnbenchError, match="larger than 20 bytes"):
        read_yaml(big, limit=20)


# ------------------------------------------------------------------ 11: metrics.json values
def metrics_with(**edits) -> str:
    data = json.loads(json.dumps(record().__dict__))
    data.update(edits)
    return json.dumps(data)


@pytest.mark.parametrize("text, reason", [
    ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
    (metrics_with(test_top1=1e308), "test_top1=1e+308 is out of range"),
    (metrics_with(test_top1=1e400), "test_top1=inf is not valid: need a finite number"),
    (metrics_with(seed=1e30), "seed=1e+30 is not valid: need an integer"),
    (metrics_with(seed=10**30), "is out of range"),
    (metrics_with(extra=[1, 2]), "extra=[1, 2] is not valid: need an object"),
    (metrics_with(extra={"size": {"total_bytes": "big"}}), "total_bytes='big' is not a number"),
    (metrics_with(curves={"val/top1": [1e39]}), "curves.val/top1[0]=1e+39 is out of range"),
    (metrics_with(status="bogus"), "status='bogus' is not one of"),
])
def test_a_hostile_metrics_json_skips_its_run_in_one_line(tmp_path, capsys, text, reason):
    run_dir_with(tmp_path / "runs", "0_good", rec=record())
    run_dir_with(tmp_path / "runs", "1_bad", metrics_text=text)
    run_dir_with(tmp_path / "runs", "2_bad_too", metrics_text=text)  # twice: one setting
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plots"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all(reason in w and "skipped" in w for w in warnings), err
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert [r["test_top1"] for r in rows] == ["90.0"]  # the good run, unchanged


def test_a_400_digit_number_is_one_line_or_its_own_digits(tmp_path, capsys):
    digits = "9" * 400
    run_dir_with(tmp_path / "runs", "a", f"seed: 0\nmodel: {{width: {digits}}}\n", record())
    run_dir_with(tmp_path / "runs", "b", "seed: 0\nmodel: {width: 3}\n", record())
    run_dir_with(tmp_path / "runs", "c", metrics_text=metrics_with()[:-1] + f', "epochs": '
                 f'{digits}}}')
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plots"])
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "epochs=" in err and "out of range" in err
    assert f"model.width={digits}" in (tmp_path / "out" / "report.md").read_text()


def test_two_top1_of_1e308_never_reach_a_mean(tmp_path):
    """The largest finite doubles, twice, overflow a sum (fsum raises, a mean is inf): they are
    not percentages, and the setting's row is the finite runs' alone."""
    for seed, top1 in enumerate([1e308, 1e308, 80.0, 90.0]):
        run_dir_with(tmp_path / "runs", f"s{seed}", f"seed: {seed}\n",
                     metrics_text=metrics_with(seed=seed, test_top1=top1))
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plots"])
    line = next(x for x in (tmp_path / "out" / "report.md").read_text().splitlines()
                if x.startswith("| method=bnn"))
    assert "85.00 ± 7.07" in line and "inf" not in line


def test_an_lr_beyond_float32_is_refused_in_one_line(make_cfg):
    from bnnbench.train import validate

    with pytest.raises(BnnbenchError, match=r"optimizer.lr=1e\+39 is not a finite float32"):
        validate(make_cfg(["optimizer.lr=1e39"]))
    validate(make_cfg(["optimizer.lr=1e38"]))  # float32's range holds it: accepted


def test_a_sweep_point_name_over_255_bytes_is_shortened_deterministically(tmp_path):
    from bnnbench.__main__ import flat_dirname

    tag = "é" * 125  # 250 bytes
    long_a, long_b = f"tags=[{tag}a]", f"tags=[{tag}b]"
    name = flat_dirname(long_a)
    assert len(f"12_{name}".encode()) <= 255 and name == flat_dirname(long_a)
    assert name != flat_dirname(long_b) and name.startswith("tags=[éé")
    (tmp_path / f"12_{name}").mkdir()  # a name the filesystem takes
    assert flat_dirname("optimizer.lr=0.1,seed=1") == "optimizer.lr=0.1,seed=1"


# ------------------------------------------------------------------ 12: escaping
def test_pipes_newlines_and_formulas_stay_in_their_cells(tmp_path):
    runs = tmp_path / "runs"
    run_dir_with(runs, "a", "seed: 0\n", record(method="a|b\n| injected | row |"))
    run_dir_with(runs, "b", "seed: 0\n", record(method="=HYPERLINK(\"http://x\")",
                                                  test_top1=None, status="failed",
                                                  error="boom | x\n| fake | row |"))
    run_dir_with(runs, "c", "seed: 0\n", record(method="@SUM(A1)", device="cpu\n# injected"))
    report_main([str(runs), "--out", str(tmp_path / "out"), "--no-plots"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert not any(line.startswith(("| injected", "| fake", "# injected"))
                   for line in md.splitlines())
    for table in (md.split("\n\n")):
        lines = [x for x in table.splitlines() if x.startswith("|")]
        counts = {x.replace("\\|", "").count("|") for x in lines}
        assert len(counts) <= 1, table  # every row has the header's columns
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    methods = sorted(r["method"] for r in rows)
    assert methods == ["'=HYPERLINK(\"http://x\")", "'@SUM(A1)", "a|b\n| injected | row |"]
    assert all(not v.startswith(("=", "+", "@")) for r in rows for v in r.values())


def test_a_run_directory_cannot_name_the_report_files(tmp_path):
    """``+sweep=`` in a run's overrides names a table only when it is one: a hostile one
    would be a path outside --out."""
    runs = tmp_path / "runs"
    run_dir_with(runs, "a", "seed: 0\n", record(overrides=["+sweep=../../escaped"]))
    report_main([str(runs), "--out", str(tmp_path / "out"), "--no-plots"])
    assert (tmp_path / "out" / "report.md").is_file()
    assert not list(tmp_path.rglob("escaped*"))


# ------------------------------------------------------------------ 13: sweep bookkeeping
def killed_point(root: Path, config: dict, metrics_text: str | None) -> Path:
    """A sweep point as a killed run leaves it: claimed (marker unlocked), config saved, a
    checkpoint; ``metrics_text`` as found."""
    import yaml

    from bnnbench.rundir import claim_run_dir, release_run_dir

    point = root / "0_point"
    claim_run_dir(point, config)
    (point / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (point / "checkpoints").mkdir()
    (point / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    if metrics_text is not None:
        (point / "metrics.json").write_text(metrics_text)
    release_run_dir(point)  # the process died: its lock is gone
    return point


def point_config(point: Path) -> dict:
    return {"seed": 0, "optimizer": {"lr": 0.1},
            "callbacks": {"model_checkpoint": {"dirpath": f"{point.resolve()}/checkpoints"}},
            "logger": {"save_dir": str(point.resolve())}}


@pytest.mark.parametrize("metrics_text", [
    metrics_with(status="bogus"),
    metrics_with()[:40],  # truncated
    '{"a": ' * 50_000 + "1" + "}" * 50_000,  # nested too deeply
])
def test_a_point_whose_metrics_json_is_not_a_result_resumes(tmp_path, metrics_text):
    from bnnbench.multirun import finished_record, sweep_failures
    from bnnbench.rundir import claim_run_dir, recorded_status, release_run_dir

    point = killed_point(tmp_path / "sweep", point_config(tmp_path / "sweep" / "0_point"),
                         metrics_text)
    assert recorded_status(point) is None and finished_record(point) is None
    assert "unfinished" in sweep_failures(tmp_path / "sweep")[point.resolve()]
    assert claim_run_dir(point, point_config(point)) is True  # resumed, not refused
    release_run_dir(point)


def test_a_moved_sweep_resumes_its_killed_points(tmp_path):
    from bnnbench.rundir import claim_run_dir, release_run_dir

    old = killed_point(tmp_path / "old", point_config(tmp_path / "old" / "0_point"), None)
    shutil.move(tmp_path / "old", tmp_path / "new")
    point = tmp_path / "new" / old.name
    assert claim_run_dir(point, point_config(point)) is True
    release_run_dir(point)
    other = {**point_config(point), "optimizer": {"lr": 0.2}}  # another recipe: still refused
    with pytest.raises(BnnbenchError, match="optimizer.lr"):
        claim_run_dir(point, other)


def test_a_moved_run_with_a_truncated_metrics_json_trains_to_its_result(tmp_path):
    """End to end: a finished run's metrics.json cut in half, the directory moved, the same
    command into the new place: it resumes from its checkpoint and records the same result."""
    from bnnbench.train import run

    overrides = ["+method=bnn", *FAST, "model.hidden_features=32"]
    first = tmp_path / "a" / "run"
    whole = run(compose_config(overrides, first))
    text = (first / "metrics.json").read_text()
    (first / "metrics.json").write_text(text[: len(text) // 2])
    shutil.move(tmp_path / "a", tmp_path / "b")
    again = run(compose_config(overrides, tmp_path / "b" / "run"))
    GlobalHydra.instance().clear()
    assert again.test_top1 == whole.test_top1 and again.status == "finished"
    assert RunRecord.read(tmp_path / "b" / "run").test_top1 == whole.test_top1


def test_a_run_directory_cannot_name_the_eval_file_outside_it(tmp_path):
    """The second evaluation's file is named after the run's data (its metrics.json): a name
    with path separators stays one file name in the output directory."""
    from bnnbench.evaluate import result_path

    (tmp_path / "eval.json").write_text("{}")
    path = result_path(None, tmp_path, "../../escaped/x", packed=False)
    assert path.parent == tmp_path and path.name == "eval-_.._escaped_x.json"
    assert result_path(None, tmp_path, "mnist5k", packed=True).name == "eval-mnist5k-packed.json"


@pytest.mark.parametrize("seed", ["1e30", "inf", ".nan", "abc", "-5"])
def test_an_unfinished_runs_config_seed_is_shown_as_none_or_its_value(tmp_path, seed):
    """A run without metrics.json takes its seed from its config: one that is no valid seed
    is listed without one, never a crash of the report."""
    runs = tmp_path / "runs"
    run_dir_with(runs, "done", rec=record())
    run_dir_with(runs, "killed", f"seed: {seed}\n")
    report_main([str(runs), "--out", str(tmp_path / "out"), "--no-plots"])
    rows = {r["run_dir"]: r for r in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    assert rows[str(runs / "killed")]["seed"] == "" and rows[str(runs / "killed")]["status"] \
        == "unfinished"
