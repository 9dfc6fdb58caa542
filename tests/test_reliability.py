"""Bad input and divergence (issue 11): one line naming the key or file, never a traceback, and a
run record that says what happened; every file bnnbench writes is written atomically."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from bnnbench.data import create_data
from bnnbench.errors import BnnbenchError, check_knobs, check_range
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.record import RunRecord
from bnnbench.train import run
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
MNIST_GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 28}


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


# --- non-finite and non-numeric values ------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=inf", "optimizer.lr=inf is not a finite number"),
    ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
    ("optimizer.lr=[1]", "optimizer.lr=[1] is not valid: need a finite number"),
    ("optimizer.lr=abc", "optimizer.lr='abc' is not valid: need a finite number"),
    ("optimizer.weight_decay=-inf", "optimizer.weight_decay=-inf is not a finite number"),
    ("+optimizer.betas=[2,0.9]", "Invalid beta parameter"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not valid: need an integer"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 is not valid: need an integer"),
    ("trainer.deterministic=3", "trainer.deterministic=3 is not valid"),
    ("seed=1.5", "seed=1.5 is not an integer"),
    ("data.batch_size=1.5", "data.batch_size=1.5 is not valid: need an integer"),
    ("data.batch_size=true", "data.batch_size=True is not valid: need an integer"),
    ("+data.split_per_class=[1,2]", "data.split_per_class=[1, 2] is not valid"),
    ("+data.split_per_class=[400,50,100]", "asks for 550 examples"),
    ("data.split_seed=-1", "data.split_seed=-1 is out of range"),
    ("model.hidden_features=0", "model.hidden_features=0 is out of range"),
    ("model.hidden_features=1.5", "model.hidden_features=1.5 is not valid: need an integer"),
    ("model.depth=abc", "model.depth='abc' is not valid: need an integer"),
    ("model.dropout_in=2", "model.dropout_in=2 is out of range"),
    ("model.dropout_hidden=nan", "model.dropout_hidden=nan is not a finite number"),
    ("+method=bnn method.stochastic=1", "method.stochastic=1 is not valid: need true or false"),
    ("+method=dorefa method.w_bits=1.5", "method.w_bits=1.5 is not valid: need an integer"),
    ("+method=tang method.scale_init=inf", "method.scale_init=inf is not a finite number"),
    ("+method=tang method.latent_clip=[1]", "method.latent_clip=[1] is not valid"),
    ("scheduler=binarynet scheduler.lr_end=0", "scheduler.lr_end=0 is out of range"),
    ("scheduler=multistep scheduler.gamma=abc", "scheduler.gamma='abc' is not valid"),
])
def test_bad_values_are_refused_before_training(make_cfg, override, message):
    with pytest.raises(BnnbenchError, match=re.escape(message)):
        run(make_cfg([*FAST, *override.split()]))  # FAST: a miss would train briefly
    assert not (run_dir() / "checkpoints").exists()
    assert not (run_dir() / "metrics.json").exists()


@pytest.mark.parametrize("build, message", [
    (lambda: create_model("mlp", **MNIST_GEOMETRY, hidden_features=1.5),
     "model.hidden_features=1.5"),
    (lambda: create_model("vgg_small", in_chans=3, num_classes=10, img_size=32, widths=[8, 0, 8]),
     "model.widths[1]=0 is out of range"),
    (lambda: create_method("bnn", fp_first="yes"), "method.fp_first='yes'"),
    (lambda: create_method("abcnet", weight_bases=[3]), "method.weight_bases=[3]"),
    (lambda: create_data("mnist5k", batch_size=2.5), "data.batch_size=2.5"),
    (lambda: create_data("cifar10", std=[0.2, 0.0, 0.2]), "data.std[1]=0.0 is out of range"),
    (lambda: create_data("cifar10", mean=[0.5]), "data.mean=[0.5] must hold 3 values"),
    (lambda: create_data("synthetic", class_signal=float("nan")), "data.class_signal=nan"),
])
def test_the_registries_check_knobs_for_every_entry_point(build, message):
    """evaluate and export build through the same registries as training."""
    with pytest.raises(BnnbenchError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("value, ok", [
    (3, True), (3.0, False), (True, False), ("3", False), (None, True), ([3], False)])
def test_check_knobs_reads_optional_int_annotations(value, ok):
    def target(*, count: int | None = None) -> None: ...

    if ok:
        check_knobs("x", target, {"count": value})
    else:
        with pytest.raises(BnnbenchError, match=r"x\.count=.* need an integer or null"):
            check_knobs("x", target, {"count": value})


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1", [1], True, None])
def test_check_range_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(BnnbenchError, match="^k="):
        check_range("k", value, low=0)


def test_cli_refuses_a_non_finite_lr_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnnbench", "optimizer.lr=inf",
                           f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["bnnbench: error: optimizer.lr=inf is not a "
                                                "finite number"]


@pytest.mark.parametrize("command, key", [
    ("bnnbench", "hydra.run.dir"), ("bnnbench.evaluate", "hydra.run.dir"),
    ("bnnbench.export", "hydra.run.dir"), ("bnnbench.size", "hydra.run.dir"),
    ("bnnbench", "hydra.sweep.dir")])
def test_an_output_dir_that_cannot_be_created_is_one_line(tmp_path, command, key):
    """Hydra makes the run (sweep) directory before any job code runs and printed its traceback
    when it could not: a directory under a regular file cannot be made on any system."""
    (tmp_path / "a_file").write_text("")
    multirun = ["-m", "seed=0,1"] if key == "hydra.sweep.dir" else []
    proc = subprocess.run([sys.executable, "-m", command, *multirun,
                           f"{key}={tmp_path}/a_file/run"],
                          cwd=tmp_path, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bnnbench: error: cannot create {key}="), lines
    assert "Not a directory" in lines[0] and f"{key}=<dir>" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "'nosuch' is neither a directory nor a table"),
    (["{runs}"], "no run under")])
def test_report_errors_are_one_line_like_every_command(tmp_path, argv, message):
    (tmp_path / "runs").mkdir()
    argv = [a.format(runs=tmp_path / "runs") for a in argv]
    proc = subprocess.run([sys.executable, "-m", "bnnbench.report", *argv], cwd=tmp_path,
                          text=True, capture_output=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnnbench: error: ") and message in lines[0]


# --- divergence ---------------------------------------------------------------------------------

def strict_json(path: Path) -> dict:
    """json.loads that refuses NaN/Infinity (what other JSON readers do)."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_non_finite_loss_stops_the_run_and_is_recorded_as_diverged(make_cfg):
    from bnnbench.errors import Diverged

    # Adam at lr 1e30: the first update blows the weights up, the next loss is NaN
    with pytest.raises(Diverged, match=r"training diverged: the loss is nan at epoch 0, step 1;"
                                       r" no checkpoint yet") as caught:
        run(make_cfg([*FAST, "optimizer.lr=1e30", "trainer.max_epochs=2"]))
    assert caught.value.exit_code not in (0, 2)
    saved = strict_json(run_dir() / "metrics.json")
    assert saved["status"] == "diverged" and saved["error"] == str(caught.value)
    assert saved["test_top1"] is None and saved["test_top5"] is None
    assert saved["curves"]["train/loss"] == []  # stopped inside the first epoch
    assert RunRecord.read(run_dir()).status == "diverged"
    from bnnbench.report.collect import load_run

    listed = load_run(run_dir())  # the report lists it with its line
    assert (listed.status, listed.error, listed.finished) == ("diverged", str(caught.value), False)


class _Trainer:
    """The little of a Trainer that StopOnDivergence reads."""

    current_epoch, global_step = 4, 123

    class strategy:  # noqa: N801
        @staticmethod
        def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:  # noqa: A002
            return decision


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_divergence_names_epoch_step_and_the_last_good_checkpoint(tmp_path, loss):
    import torch

    from bnnbench.errors import Diverged
    from bnnbench.train import StopOnDivergence

    (tmp_path / "last.ckpt").write_bytes(b"saved at the end of epoch 3")
    stop = StopOnDivergence(tmp_path)
    stop.on_before_backward(_Trainer(), None, torch.tensor(2.5))  # finite: nothing happens
    with pytest.raises(Diverged, match=rf"the loss is {loss} at epoch 4, step 123; last good "
                                       rf"checkpoint: {re.escape(str(tmp_path))}/last\.ckpt"):
        stop.on_before_backward(_Trainer(), None, torch.tensor(loss))


def record(**changes) -> RunRecord:
    base = dict(method="bnn", model="mlp", data="mnist5k", seed=0, test_top1=90.0, test_top5=99.0,
                best_val_top1=91.0, num_params=10, epochs=2, wall_time_s=1.0,
                epoch_time_s=[0.5, 0.5], curves={"val/loss": [0.3, float("nan")]},
                config_hash="abc", git_commit="x", device="cpu x1",
                overrides=["+method=bnn"])
    return RunRecord(**{**base, **changes})


def test_metrics_json_never_holds_nan(tmp_path):
    record(best_val_top1=float("nan"), status="diverged", test_top1=None, test_top5=None,
           error="training diverged").write(tmp_path)
    saved = strict_json(tmp_path / "metrics.json")
    assert saved["best_val_top1"] is None and saved["curves"]["val/loss"] == [0.3, None]
    back = RunRecord.read(tmp_path)
    assert back.status == "diverged" and back.curves["val/loss"] == [0.3, None]


# --- the report ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ('{"method": "bnn", "mod', "is not readable JSON"),  # half-written
    ("", "is not readable JSON"),  # zero bytes
    ("[1, 2]", "does not hold a JSON object"),
    ('{"method": "bnn"}', "lacks model, data, seed"),
    (None, "test_top1='abc' is not valid"),  # a field of the wrong type
    (None, "status='exploded' is not one of"),
])
def test_the_report_skips_a_malformed_metrics_json_naming_it(tmp_path, capsys, text, reason):
    from bnnbench.report.collect import load_runs

    good, bad = tmp_path / "0_good", tmp_path / "1_bad"
    record().write(good)
    bad.mkdir()
    if text is None:
        edit = {"test_top1": "abc"} if "test_top1" in reason else {"status": "exploded"}
        text = json.dumps({**json.loads((good / "metrics.json").read_text()), **edit})
    (bad / "metrics.json").write_text(text)
    assert [run.record for run in load_runs([tmp_path])] == [RunRecord.read(good)]
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("bnnbench.report: warning: ") and "\n" not in warning
    assert f"{bad / 'metrics.json'} is malformed" in warning and reason in warning


# --- atomic writes ------------------------------------------------------------------------------

# Writes that are not results: the GPU script's and the mutation tool's logs of a subprocess
# (streamed as it runs), the dataloading bench's throwaway images in a temporary directory, a
# /proc control file, and bnnbench/files.py itself (the atomic writer's own fsync).
NOT_RESULTS = {("bnnbench/bench/gpu.py", "log.open"), ("bnnbench/bench/gpu.py", "write_text"),
               ("bnnbench/devtools/mutation.py", "open"),
               ("bnnbench/bench/dataloading.py", "save"),
               ("bnnbench/bench/peak_memory.py", "write_text"), ("bnnbench/files.py", "open")}
WRITERS = {"write_text", "write_bytes", "dump", "save_file", "save", "savefig", "to_csv"}


def direct_writes(path: Path) -> list[str]:
    """Calls in ``path`` that write a file in place (``.write_text``, ``json.dump``,
    ``save_file``, ``open(..., "w")``...) outside a ``with atomic_path(...)`` block."""
    import ast

    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
                "atomic_path" in ast.unparse(item.context_expr) for item in node.items):
            guarded.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in guarded:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
            node.func, "id", "")
        mode = next((a for a in node.args[1:2] if isinstance(a, ast.Constant)), None)
        if name == "open" and isinstance(node.func, ast.Attribute):  # path.open("w")
            mode = next((a for a in node.args[:1] if isinstance(a, ast.Constant)), None)
        mode = mode or next((k.value for k in node.keywords if k.arg == "mode"), None)
        writes_mode = isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+")
        to_text = name == "to_csv" and not node.args and not any(
            k.arg == "path_or_buf" for k in node.keywords)  # pandas returns the text
        if (name in WRITERS and not to_text) or (name == "open" and writes_mode):
            rel = path.relative_to(ROOT).as_posix()
            label = ast.unparse(node.func).rsplit(".", 2)
            key = ".".join(label[-2:]) if name == "open" else name
            if (rel, key) not in NOT_RESULTS and (rel, name) not in NOT_RESULTS:
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)[:70]}")
    return found


def test_every_file_bnnbench_writes_is_written_atomically():
    """JSON, Markdown, CSV and safetensors go through bnnbench.files (temp file, fsync,
    os.replace): a crash or a reader never sees half a file."""
    offenders = [hit for path in sorted((ROOT / "bnnbench").rglob("*.py"))
                 for hit in direct_writes(path)]
    assert offenders == []


# --- a checkpoint that does not fit its model ---------------------------------------------------

def crafted_run(make_cfg, overrides: list[str]) -> tuple[Path, Path]:
    """A run directory holding its config and a checkpoint whose first weight has the wrong
    shape (a file edited, or written by another model under the same spec), without training."""
    import torch
    from omegaconf import OmegaConf

    from bnnbench.spec import CHECKPOINT_SPEC_KEY, build_net, data_geometry, spec_from_config

    cfg = make_cfg(overrides)
    out = run_dir()
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    spec = spec_from_config(cfg)
    state = build_net(spec, data_geometry(spec)).state_dict()
    first = next(k for k, v in state.items() if v.ndim == 2)
    state[first] = torch.zeros(state[first].shape[0] + 1, state[first].shape[1])
    ckpt = out / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                CHECKPOINT_SPEC_KEY: spec}, ckpt)
    return out, ckpt


@pytest.mark.parametrize("entry", ["evaluate", "export", "resume"])
def test_a_checkpoint_of_other_shapes_is_one_line(make_cfg, entry):
    from bnnbench.evaluate import evaluate_run
    from bnnbench.export import export_run

    overrides = ["+method=bnn", "model.hidden_features=16", *FAST]
    out, ckpt = crafted_run(make_cfg, overrides)
    with pytest.raises(BnnbenchError) as caught:
        if entry == "evaluate":
            evaluate_run(out)
        elif entry == "export":
            export_run(out)
        else:
            run(make_cfg([*overrides, f"ckpt_path={ckpt}"]))
    message = str(caught.value)
    assert message.startswith(f"{ckpt} does not match the model its spec builds: other shapes")
    assert "\n" not in message


# --- no false alarms: every shipped config passes the checks ------------------------------------

def shipped(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("overrides", [
    *([f"+preset={name}"] for name in shipped("preset")),
    *([f"+method={name}"] for name in shipped("method")),
    *([f"optimizer={name}"] for name in shipped("optimizer")),
    *([f"scheduler={name}"] for name in shipped("scheduler")),
    *([f"trainer={name}"] for name in shipped("trainer")),
    # model=timm names its architecture (model.name is mandatory, ???)
    *([f"model={name}", *(["model.name=mobilenetv3_small_100"] if name == "timm" else [])]
      for name in shipped("model")),
    *([f"data={name}"] for name in shipped("data")),
])
def test_every_shipped_config_passes_validation(make_cfg, overrides):
    """The checks refuse bad values, not the recipes bnnbench ships (model, method and data
    knobs checked as the registries check them, without building anything large)."""
    from bnnbench.data import DATA_MODULES
    from bnnbench.methods import get_method_class
    from bnnbench.models.registry import _MODELS
    from bnnbench.spec import spec_from_config
    from bnnbench.train import validate

    cfg = make_cfg(overrides)
    validate(cfg)
    spec = spec_from_config(cfg)
    check_knobs("method", get_method_class(spec["method"]["name"]), spec["method"]["knobs"])
    if spec["model"]["name"] in _MODELS:
        check_knobs("model", _MODELS[spec["model"]["name"]], spec["model"]["kwargs"])
    module, _, name = DATA_MODULES[spec["data"]["name"]].rpartition(".")
    if spec["data"]["name"] != "imagenet":  # its module needs the ffcv extra
        import importlib

        check_knobs("data", getattr(importlib.import_module(module), name), spec["data"]["args"])


def test_check_knobs_reads_omegaconf_lists_as_lists():
    """Hydra's instantiate hands a builder ListConfig values."""
    from omegaconf import OmegaConf

    def target(*, widths: tuple[int, int, int] = (1, 2, 3)) -> None: ...

    check_knobs("model", target, {"widths": OmegaConf.create([8, 16, 32])})
    with pytest.raises(BnnbenchError, match=r"model\.widths=\[8, 1\.5, 32\]"):
        check_knobs("model", target, {"widths": OmegaConf.create([8, 1.5, 32])})
