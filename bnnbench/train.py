"""One run, straight through: data, model, method, module, trainer, record.

Only this module and the Hydra entry points read the config object; everything they call takes
plain arguments.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, read_write
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from bnnbench.callbacks import BatchNormRecalibration, EpochRecorder, FlipRatio
from bnnbench.errors import (
    BnnbenchError,
    Diverged,
    Preempted,
    check_knobs,
    check_range,
    first_line,
)
from bnnbench.trained import check_shapes, load_checkpoint
from bnnbench.files import atomic_path, write_atomic
from bnnbench.lit import BNNModule, count_parameters
from bnnbench.optimizers import binary_weights, takes_binary_groups
from bnnbench.recipes import (
    RECIPES,
    STAGE1_LINK,
    STAGES,
    load_teacher,
    stage_config,
    warm_start,
)
from bnnbench.record import FLOAT32_MAX, RunRecord, git_commit
from bnnbench.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    RECIPE_MARKER,
    claim_run_dir,
    is_ddp_worker,
    recipe_hash,
    recorded_status,
    release_run_dir,
)
from bnnbench.size import account
from bnnbench.spec import (
    CHECKPOINT_SPEC_KEY,
    SECTIONS,
    Spec,
    build_data,
    build_method,
    build_model,
    geometry_of,
    spec_from_config,
)
from bnnbench.summary import print_summary

# What metrics.json keeps of the size accounting (`python -m bnnbench.size` prints all of it).
PREEMPTED_CHECKPOINT = "preempted.ckpt"
SIZE_SUMMARY = ("total_bytes", "fp32_bytes", "compression", "binary_mac_share", "xnor_mac_share")


def validate(cfg: DictConfig) -> None:
    """Reject invalid values before anything trains, one line naming the key and the fix.

    Every number in the config must be finite; the optimizer's, scheduler's and trainer's knobs
    must fit their classes' annotations (:func:`~bnnbench.errors.check_knobs`); the optimizer and
    scheduler are built once on a dummy parameter so torch's own checks (betas, momentum, ...)
    speak now, as one line, not as a trace from inside ``fit``. Model, method and data knobs are
    checked where they are built (the registries), so evaluate and export check them too.
    """
    check_finite(OmegaConf.to_container(cfg, resolve=True))
    check_range("seed", cfg.seed, low=0, integer=True)
    factories = {}
    for section in ("optimizer", "scheduler", "trainer"):
        node = cfg.get(section)
        if node is None:
            continue
        knobs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                 if not k.startswith("_")}
        check_knobs(section, get_object(node._target_), knobs)
        if section != "trainer":
            factories[section] = instantiate(node)
    check_range("trainer.max_epochs", cfg.trainer.max_epochs, low=1, integer=True)
    check_range("bn_recalibration", cfg.get("bn_recalibration") or 0, low=0, integer=True)
    check_range("optimizer.lr", cfg.optimizer.lr, low=0, low_inclusive=False)
    if cfg.get("teacher_weights") and not str(cfg.get("teacher") or "").startswith("timm:"):
        raise BnnbenchError(f"teacher_weights={cfg.teacher_weights} are the weights of a "
                            "teacher=timm:<name>; name the timm model, or drop teacher_weights")
    recipe = cfg.get("recipe")
    if recipe is not None and (not isinstance(recipe, DictConfig)
                               or recipe.get("name") not in RECIPES):
        raise BnnbenchError(f"recipe={recipe} is not a recipe; choose one of: "
                            + ", ".join(f"+recipe={name}" for name in RECIPES))
    if cfg.get("teacher"):
        kd = cfg.get("kd") or {}
        check_range("kd.temperature", kd.get("temperature", 1.0), low=0, low_inclusive=False)
        check_range("kd.weight", kd.get("weight", 1.0), low=0, high=1)
    try:
        optimizer = factories["optimizer"]([torch.nn.Parameter(torch.zeros(1))])
        if "scheduler" in factories:
            factories["scheduler"](optimizer)
    except BnnbenchError:
        raise
    except (ValueError, TypeError) as err:  # torch's "Invalid beta parameter at index 0: 2.0"
        raise BnnbenchError(f"{' / '.join(factories)}: {first_line(err)}") from err


def check_finite(value: Any, key: str = "") -> None:
    """Every float in a (plain) config is finite: ``inf``/``nan`` anywhere is refused by name."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BnnbenchError(f"{key}={value} is not a finite number")
    if isinstance(value, float) and abs(value) > FLOAT32_MAX:  # finite here, inf in training
        raise BnnbenchError(f"{key}={value} is not a finite float32 number (at most "
                            f"{FLOAT32_MAX:.4g}): training computes in float32")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{key}[{i}]")


def choice(group: str, default: str) -> str:
    """The option chosen for a config group (e.g. ``method`` -> ``bnn``) in the Hydra run."""
    value = HydraConfig.get().runtime.choices.get(group)
    return value if value is not None else default


class StoreSpecInCheckpoint(pl.Callback):
    """Every checkpoint carries the run spec it was trained with (plain data, loadable with
    ``weights_only=True``): evaluate/export rebuild the network from this copy, so a run
    directory whose config changed later cannot be evaluated as another model."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_SPEC_KEY] = self.spec


class SaveOnPreemption(pl.Callback):
    """SIGTERM (preemption): Lightning stops at the next batch; save the weights and loop state at
    that point to ``checkpoints/preempted.ckpt`` before anything is torn down."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)


class StopOnDivergence(pl.Callback):
    """A non-finite training loss stops the run at that step, before its backward pass and
    update: raises :class:`Diverged` naming the epoch, the step and the last checkpoint saved
    before it (the end of the previous epoch; the weights in it trained on finite losses only).
    Under DDP every rank takes the same decision (one rank's NaN poisons them all anyway)."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        last = self.checkpoint_dir / LAST_CHECKPOINT
        good = (f"last good checkpoint: {last} (continue from it into a new hydra.run.dir with "
                "ckpt_path=<it>, e.g. at a lower optimizer.lr)" if last.is_file()
                else "no checkpoint yet (it diverged in its first epoch)")
        raise Diverged(f"training diverged: the loss is {loss.detach().float().mean().item()} at "
                       f"epoch {trainer.current_epoch}, step {trainer.global_step}; {good}; "
                       f"metrics.json records status diverged")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through :func:`bnnbench.files.atomic_path`: a run killed
    while saving leaves the previous ``last.ckpt`` whole, so it can still be resumed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        with atomic_path(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class ResumableRNG(pl.Callback):
    """The global RNG states (torch, numpy, random) go into each checkpoint and come back on
    resume, so a resumed run draws the same data order and dropout masks as one never stopped."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"torch": torch.get_rng_state(), "cuda": cuda, "random": random.getstate(),
                "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        version, internal, gauss_next = state["random"]
        random.setstate((version, tuple(internal), gauss_next))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def run(cfg: DictConfig) -> RunRecord:
    """Train, validate and test one configuration; write metrics.json beside the Hydra outputs.

    Into a directory holding a killed run of the same config, the run resumes from its
    ``checkpoints/last.ckpt``; ``ckpt_path=<file>`` resumes from any checkpoint of this model.
    """
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # returns at once when GuardRunDir already claimed the directory for this process
    resumed = claim_run_dir(run_dir, OmegaConf.to_container(cfg, resolve=True))
    try:
        if cfg.get("recipe") is not None:
            return run_stages(cfg, run_dir)
        return train_claimed(cfg, run_dir, resumed)
    finally:
        release_run_dir(run_dir)


STAGE_DIR = "stage{}"


def run_stages(cfg: DictConfig, run_dir: Path) -> RunRecord:
    """A recipe in stages (``+recipe=two_stage|fp_init|fp_teacher``, :mod:`bnnbench.recipes`):
    stage 1 into ``<run_dir>/stage1``, stage 2 into ``<run_dir>/stage2`` using stage 1's run
    (:func:`bnnbench.recipes.stage_config`); returns stage 2's record. Each stage is a whole run
    (config, checkpoints, metrics.json) under the same rules: rerun into the same ``run_dir``, a
    finished stage 1 is skipped and a killed stage resumes."""
    name = str(cfg.recipe.name)
    if cfg.get("ckpt_path"):
        raise BnnbenchError(f"ckpt_path= resumes one run; a {name} run resumes by rerunning "
                            "its command into the same hydra.run.dir: drop ckpt_path")
    if not is_ddp_worker():
        write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        write_atomic(run_dir / RECIPE_MARKER, json.dumps(
            {"recipe": name, "stages": [STAGE_DIR.format(s) for s in STAGES]}) + "\n")
    dirs = {stage: run_dir / STAGE_DIR.format(stage) for stage in STAGES}
    if recorded_status(dirs[2]) == "finished":
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # a rerun sweep keeps a finished point
            print(f"bnnbench: {run_dir} finished before ({name}): skipped")
            return RunRecord.read(dirs[2])
        raise BnnbenchError(f"{run_dir} already holds a finished {name} run "
                            f"({STAGE_DIR.format(2)}/metrics.json); choose a new hydra.run.dir")
    configs = {1: stage_config(cfg, 1), 2: stage_config(cfg, 2, dirs[1])}
    for stage in STAGES:  # both checked before stage 1 trains
        with hydra_output_dir(dirs[stage]):
            validate(configs[stage])
    if recorded_status(dirs[1]) == "finished":
        print(f"{name}: stage 1 finished in {dirs[1]}; skipping to stage 2")
    else:
        train_stage(configs[1], dirs[1])
    return train_stage(configs[2], dirs[2])


def train_stage(cfg: DictConfig, stage_dir: Path) -> RunRecord:
    """One stage in its own run directory, claimed as a run's (resuming a killed one)."""
    with hydra_output_dir(stage_dir):
        resumed = claim_run_dir(stage_dir, OmegaConf.to_container(cfg, resolve=True))
        try:
            return train_claimed(cfg, stage_dir, resumed)
        finally:
            release_run_dir(stage_dir)


@contextlib.contextmanager
def hydra_output_dir(path: Path) -> Iterator[None]:
    """Point ``${hydra:runtime.output_dir}`` (checkpoints, logger) at ``path`` for a stage."""
    runtime = HydraConfig.instance().cfg.hydra.runtime
    old = runtime.output_dir
    with read_write(runtime):
        runtime.output_dir = str(path)
    try:
        yield
    finally:
        with read_write(runtime):
            runtime.output_dir = old


def resume_from(cfg: DictConfig, run_dir: Path, resumed: bool,
                spec: Spec) -> tuple[Path, dict[str, tuple[int, ...]]] | None:
    """The checkpoint to resume from (``ckpt_path``, else a killed run's ``last.ckpt``), checked
    to hold this run's model and method, and its network's tensor shapes."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise BnnbenchError(f"ckpt_path={path} is not a file; pass a checkpoint to resume "
                                "from (e.g. <run_dir>/checkpoints/last.ckpt)")
    elif resumed and (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file():
        path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    else:
        return None
    state, trained = load_checkpoint(path)
    for section in ("model", "method"):
        if trained[section] != spec[section]:
            raise BnnbenchError(f"{path} was trained as {section} {trained[section]['name']!r} "
                                f"{trained[section][SECTIONS[section]]}, not this run's "
                                f"{spec[section]['name']!r} {spec[section][SECTIONS[section]]}; "
                                "resume it with its own config")
    return path, {k: tuple(v.shape) for k, v in state.items()}


def train_claimed(cfg: DictConfig, run_dir: Path, resumed: bool = False) -> RunRecord:
    """:func:`run` once ``run_dir`` is this process's."""
    spec = spec_from_config(cfg)
    tags = tags_of(cfg)
    resume = resume_from(cfg, run_dir, resumed, spec)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if not is_ddp_worker():  # before fit: a killed run's directory says what it was training
        write_atomic(run_dir / CONFIG_FILE, resolved)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_data(spec)
    geometry = geometry_of(datamodule, spec["data"]["name"])
    if resume is not None:  # one line instead of Lightning's size-mismatch trace
        check_shapes(spec, geometry, resume[1], str(resume[0]))
    ckpt_path = resume[0] if resume is not None else None
    net = build_model(spec, geometry)
    method = build_method(spec)
    net = method.convert(net)
    warm = warm_start(net, cfg.init) if cfg.get("init") else None
    optimizer = instantiate(cfg.optimizer)
    if takes_binary_groups(optimizer):  # Bop: one line now for a method without sign weights
        binary_weights(net, method)
    size = account(net, "deployed", (geometry["in_chans"], geometry["img_size"],
                                     geometry["img_size"])).to_dict()
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    kd = cfg.get("kd") or {}
    teacher = (load_teacher(cfg.teacher, geometry, cfg.get("teacher_weights"))
               if cfg.get("teacher") else None)
    module = BNNModule(net, method, optimizer=optimizer, scheduler=scheduler,
                       teacher=teacher, kd_temperature=float(kd.get("temperature", 1.0)),
                       kd_weight=float(kd.get("weight", 1.0)))

    recorder = EpochRecorder()
    recalibration = int(cfg.get("bn_recalibration") or 0)
    recalibrate = [BatchNormRecalibration(recalibration)] if recalibration else []
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    # Lightning runs ModelCheckpoint last: a checkpoint saved at the end of a training epoch holds
    # the recorder's (and FlipRatio's) curves so far, so a resume continues with every curve
    optional = optional_callbacks(cfg, run_dir, has_logger=logger is not False)
    checkpoints = [c for c in optional if isinstance(c, pl.callbacks.ModelCheckpoint)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=logger, plugins=[AtomicCheckpointIO()],
        enable_checkpointing=bool(checkpoints),  # else Lightning adds its own, elsewhere
        callbacks=[recorder, StoreSpecInCheckpoint(spec), ResumableRNG(),
                   StopOnDivergence(run_dir / CHECKPOINT_DIR),
                   SaveOnPreemption(run_dir / CHECKPOINT_DIR / PREEMPTED_CHECKPOINT),
                   *recalibrate, *optional])

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise Preempted(f"stopped by SIGTERM at epoch {trainer.current_epoch}, step "
                        f"{trainer.global_step}: saved {CHECKPOINT_DIR}/{PREEMPTED_CHECKPOINT}; "
                        "rerun the same command to resume from the last epoch's checkpoint (or "
                        f"pass ckpt_path=<run_dir>/{CHECKPOINT_DIR}/{PREEMPTED_CHECKPOINT})"
                        ) from None
    except Diverged as err:  # recorded below, then raised: one line, a non-zero exit
        diverged = err
    else:
        diverged = None
    # the final weights, as last.ckpt holds them: with ckpt_path=None inside a SLURM job,
    # Lightning would test its requeue checkpoint (hpc_ckpt_<n>.ckpt) from an earlier attempt
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    final = str(last) if last.is_file() else None
    test = {} if diverged else trainer.test(module, datamodule=datamodule, verbose=False,
                                            ckpt_path=final)[0]
    wall = time.perf_counter() - start

    curves = dict(recorder.curves)
    for callback in optional:
        if isinstance(callback, FlipRatio):
            curves.update(callback.curves)
    val_top1 = [v for v in recorder.curves["val/top1"] if not math.isnan(v)]
    record = RunRecord(
        method=spec["method"]["name"], model=choice("model", "?"), data=spec["data"]["name"],
        seed=int(cfg.seed), test_top1=_rounded(test.get("test/top1")),
        test_top5=_rounded(test.get("test/top5")),
        best_val_top1=round(max(val_top1, default=float("nan")), 4),
        num_params=count_parameters(net), epochs=trainer.current_epoch,
        wall_time_s=round(wall, 3), epoch_time_s=recorder.epoch_time_s, curves=curves,
        config_hash=recipe_hash(cfg), git_commit=git_commit(), device=describe_device(trainer),
        overrides=list(HydraConfig.get().overrides.task),
        extra={"size": {k: size[k] for k in SIZE_SUMMARY}, "tags": tags,
               "bn_recalibration": {"batches": recalibration,
                                    "used": recalibrate[0].used if recalibrate else 0},
               **({"init": warm.to_dict()} if warm is not None else {}),
               **({"recipe": recipe_record(cfg)} if cfg.get("recipe") is not None else {})},
        status="diverged" if diverged else "finished", error=str(diverged) if diverged else None,
    )
    if trainer.is_global_zero:
        record.write(run_dir)
        print_summary(record, run_dir, checkpoints=saved_checkpoints(checkpoints),
                      report_dir=report_dir(run_dir))
    if diverged:
        raise diverged
    return record


def recipe_record(cfg: DictConfig) -> dict[str, Any]:
    """What metrics.json says of a recipe's stage: its number and, for stage 2, the run
    directory of stage 1 it started from (``init=``) or distils from (``teacher=``)."""
    record: dict[str, Any] = {"name": str(cfg.recipe.name), "stage": int(cfg.recipe.stage)}
    if int(cfg.recipe.stage) == 2:
        record["stage1_run_dir"] = str(cfg[STAGE1_LINK[str(cfg.recipe.name)]])
    return record


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def tags_of(cfg: DictConfig) -> list[str]:
    """``tags=[a,b]`` (or one ``tags=a``) as a list of strings."""
    tags = cfg.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    elif isinstance(tags, ListConfig):
        tags = OmegaConf.to_container(tags)
    if not isinstance(tags, list) or not all(isinstance(t, (str, int, float)) for t in tags):
        raise BnnbenchError(f"tags={tags} must be a list of labels, e.g. tags=[ablation,lr]")
    return [str(t) for t in tags]


def optional_callbacks(cfg: DictConfig, run_dir: Path, has_logger: bool) -> list[pl.Callback]:
    """Every entry of the ``callbacks`` group that has a ``_target_`` (conf/callbacks/), built.

    This is the user's composed config, so instantiating it is what was asked for; a run
    directory's saved config is never instantiated (:mod:`bnnbench.spec`). An entry set to null
    is dropped; the lr monitor is dropped when the run has no logger (it only feeds loggers).
    Checkpoints must go to ``<run_dir>/checkpoints``: resume, evaluate and export read them there.
    """
    built: list[pl.Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise BnnbenchError(f"callbacks.{name} has no _target_: give it one (see "
                                "conf/callbacks/default.yaml) or drop it with "
                                f"callbacks.{name}=null")
        try:
            callback = instantiate(node)
        except Exception as err:  # an unknown class or keyword: one line naming the entry
            cause = err.__cause__ or err
            raise BnnbenchError(f"callbacks.{name}: {str(cause).splitlines()[0]}") from err
        if not isinstance(callback, pl.Callback):
            raise BnnbenchError(f"callbacks.{name}: {node._target_} is not a Lightning callback")
        if isinstance(callback, pl.callbacks.LearningRateMonitor) and not has_logger:
            continue
        if isinstance(callback, pl.callbacks.ModelCheckpoint) and (
                callback.dirpath is None
                or Path(callback.dirpath).resolve() != (run_dir / CHECKPOINT_DIR).resolve()):
            raise BnnbenchError(f"callbacks.{name}.dirpath={callback.dirpath} must be the run's "
                                f"{CHECKPOINT_DIR}/ (resume, evaluate and export read it there): "
                                f"leave it at ${{hydra:runtime.output_dir}}/{CHECKPOINT_DIR}")
        built.append(callback)
    return built


def saved_checkpoints(callbacks: list[pl.callbacks.ModelCheckpoint]) -> list[Path]:
    """The checkpoint files the run's ModelCheckpoints left (best and last)."""
    paths = {Path(p) for c in callbacks for p in (c.best_model_path, c.last_model_path) if p}
    return sorted(p for p in paths if p.is_file())


def report_dir(run_dir: Path) -> Path:
    """What ``bnnbench.report`` should read: the sweep's directory in a multirun, else the run's."""
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN:
        return Path(hydra.sweep.dir)
    return run_dir


def describe_device(trainer: pl.Trainer) -> str:
    """e.g. 'cpu x2 (ddp)' or 'NVIDIA H100 80GB HBM3 x1'."""
    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else root.type
    strategy = type(trainer.strategy).__name__.replace("Strategy", "").lower()
    return f"{name} x{trainer.world_size} ({strategy})"
