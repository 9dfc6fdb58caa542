"""A trained run loaded back: its checkpoint, the network its spec builds, checked against the run.

Shared by :mod:`bnnbench.evaluate` and :mod:`bnnbench.export` (and the tests). The weights are
named by ``run_dir`` (``checkpoints/<checkpoint>.ckpt``) and/or ``ckpt_path`` (any checkpoint file,
lightning-hydra-template's spelling) (:func:`resolve_source`). The network is rebuilt through the
registries from the spec the checkpoint carries (:mod:`bnnbench.spec`): nothing read from disk is
instantiated. A run directory whose config names another model, method or data geometry is
refused, and the checkpoint's tensor shapes are checked on the meta device before anything is
built for real (:func:`check_shapes`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError
from bnnbench.nn.layers import _QuantMixin
from bnnbench.rundir import CHECKPOINT_DIR, CONFIG_FILE, HYDRA_DIR
from bnnbench.spec import (
    CHECKPOINT_SPEC_KEY,
    SECTIONS,
    Spec,
    build_net,
    check_spec,
    data_geometry,
    spec_from_config,
)

CONFIG_FILES = (CONFIG_FILE, f"{HYDRA_DIR}/config.yaml")


def run_config_path(run_dir: Path) -> Path:
    """The run's config file: ``config_resolved.yaml``, else ``.hydra/config.yaml``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BnnbenchError(f"run_dir={run_dir} is not a directory")
    for name in CONFIG_FILES:
        if (run_dir / name).exists():
            return run_dir / name
    raise BnnbenchError(f"{run_dir} holds no run config ({' or '.join(CONFIG_FILES)}); "
                        "point run_dir at a directory written by `python -m bnnbench`")


def read_run_spec(path: Path) -> Spec:
    """The spec of a run config file, read as data: nothing it names is instantiated."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise BnnbenchError(f"{path} is not a readable YAML config "
                            f"({str(err).splitlines()[0][:80]})") from err
    return spec_from_config(cfg, str(path))


def checkpoint_path(run_dir: Path, checkpoint: str = "last") -> Path:
    """``<run_dir>/checkpoints/<checkpoint>.ckpt`` (or ``checkpoint`` as a path); must exist."""
    path = Path(checkpoint)
    if path.suffix != ".ckpt":
        path = Path(run_dir) / CHECKPOINT_DIR / f"{checkpoint}.ckpt"
    if not path.is_file():
        raise BnnbenchError(f"no checkpoint at {path}: {run_dir} holds no trained weights of "
                            "that name (train it first, or pass checkpoint=best|last or "
                            "ckpt_path=<file.ckpt>)")
    return path


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint sits in (``<run>/checkpoints/<name>.ckpt`` beside a run
    config), else None."""
    run_dir = Path(ckpt).resolve().parent.parent
    if Path(ckpt).resolve().parent.name == CHECKPOINT_DIR and any(
            (run_dir / name).is_file() for name in CONFIG_FILES):
        return run_dir
    return None


def resolve_source(run_dir: Path | str | None, ckpt_path: Path | str | None = None,
                   checkpoint: str = "last") -> tuple[Path | None, Path]:
    """(the run directory or None, the checkpoint file) named by ``run_dir`` and/or
    ``ckpt_path`` (a file; else ``<run_dir>/checkpoints/<checkpoint>.ckpt``). A ``ckpt_path``
    alone belongs to the run directory it sits in, if any."""
    if ckpt_path is None and run_dir is None:
        raise BnnbenchError("name the trained weights: run_dir=<run directory> or "
                            "ckpt_path=<file.ckpt>")
    if run_dir is not None:
        run_config_path(Path(run_dir))  # a run directory, or one clear error
    if ckpt_path is None:
        return Path(run_dir), checkpoint_path(Path(run_dir), checkpoint)  # type: ignore[arg-type]
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise BnnbenchError(f"ckpt_path={ckpt} is not a file (a checkpoint written by "
                            "`python -m bnnbench`, e.g. <run_dir>/checkpoints/last.ckpt)")
    return (Path(run_dir) if run_dir is not None else run_dir_of(ckpt)), ckpt


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], Spec]:
    """(the network's state_dict without the ``net.`` prefix, the spec it was trained with)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BnnbenchError(f"{path} is not a readable checkpoint ({type(err).__name__})") from err
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise BnnbenchError(f"{path} has no state_dict; is it a bnnbench checkpoint?")
    if CHECKPOINT_SPEC_KEY not in ckpt:
        raise BnnbenchError(f"{path} does not record what it was trained as (written before "
                            "bnnbench stored its spec in checkpoints); retrain the run")
    spec = check_spec(ckpt[CHECKPOINT_SPEC_KEY], f"{path}:{CHECKPOINT_SPEC_KEY}")
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}, spec


def load_trained(run_dir: Path | None, checkpoint: str = "last",
                 ckpt_path: Path | None = None) -> tuple[nn.Module, Spec, dict[str, int]]:
    """(network in eval mode with the checkpoint's weights, its spec, its data geometry).

    The checkpoint: ``ckpt_path``, else ``<run_dir>/checkpoints/<checkpoint>.ckpt``
    (:func:`resolve_source`). The network is rebuilt from the checkpoint's own spec; a run
    directory whose config says otherwise (model, method or data geometry) is refused rather than
    evaluated as another model.
    """
    run_dir, ckpt = resolve_source(run_dir, ckpt_path, checkpoint)
    # the run's config is read (and refused if crafted) before the checkpoint is opened
    run_spec = read_run_spec(run_config_path(run_dir)) if run_dir is not None else None
    state, spec = load_checkpoint(ckpt)
    geometry = data_geometry(spec)
    if run_spec is not None:
        check_run_config(run_spec, run_dir, ckpt, spec, geometry)
    check_shapes(spec, geometry, {k: tuple(v.shape) for k, v in state.items()}, str(ckpt))
    net = build_net(spec, geometry)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise BnnbenchError(f"{ckpt} does not match the run's model: missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval(), spec, geometry


def check_run_config(run_spec: Spec, run_dir: Path, ckpt: Path, spec: Spec,
                     geometry: dict[str, int]) -> None:
    """Refuse a run directory whose config (``run_spec``) names another model, method or data
    geometry than the checkpoint's spec (the directory was changed after training)."""
    for section in ("model", "method"):
        if run_spec[section] != spec[section]:
            raise BnnbenchError(
                f"{ckpt} was trained as {section} {spec[section]['name']!r} "
                f"{spec[section][SECTIONS[section]]} but {run_dir}'s config says "
                f"{run_spec[section]['name']!r} {run_spec[section][SECTIONS[section]]}; the run "
                "directory was changed after training: restore its config")
    if data_geometry(run_spec) != geometry:
        raise BnnbenchError(f"{ckpt} was trained on data of geometry {geometry} but {run_dir}'s "
                            f"config says {data_geometry(run_spec)}; restore its config")


def check_shapes(spec: Spec, geometry: dict[str, int], shapes: dict[str, tuple[int, ...]],
                 source: str, packed: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse when the network the spec builds (on the meta device: no memory) does not hold
    exactly the tensors a file stores, before building it for real. ``packed``: quantized
    layers' weight shapes stored in packed form (not in ``shapes``)."""
    packed = packed or {}
    with torch.device("meta"):
        net = build_net(spec, geometry)
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked") and ".weight_quantizer." not in f".{k}"}
    for name, shape in packed.items():
        layer = net.get_submodule(name) if name in dict(net.named_modules()) else None
        if not isinstance(layer, _QuantMixin):
            raise BnnbenchError(f"{source} does not match the model its spec builds: layer "
                                f"{name} is not quantized there")
        if tuple(layer.weight.shape) != tuple(shape):
            raise BnnbenchError(f"{source} does not match the model its spec builds: layer "
                                f"{name} stores a weight of shape {tuple(shape)}, the model's "
                                f"is {tuple(layer.weight.shape)}")
        state.pop(f"{name}.weight", None)
    stored = {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(state) - set(stored))
    unexpected = sorted(set(stored) - set(state))
    wrong = sorted(k for k in set(state) & set(stored) if tuple(state[k]) != tuple(stored[k]))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label} {keys[:3]}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected),
                            ("other shapes", wrong)) if keys)
        raise BnnbenchError(f"{source} does not match the model its spec builds: {detail}")
