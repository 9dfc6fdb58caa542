"""Evaluate a trained run (or its packed export) on the test split of any configured dataset.

``python -m bnnbench.evaluate run_dir=<dir> | ckpt_path=<file.ckpt> [data=<name>]
[data.<key>=<value> ...] [checkpoint=last|best] [packed=true] [packed_path=<file>]
[device=auto|cpu|cuda] [out=<path>]`` -- a Hydra app (``conf/evaluate.yaml``): ``--help``,
``--cfg job``, the override grammar of ``python -m bnnbench``.

* The network is rebuilt through the registries from the spec stored in the checkpoint
  (``ckpt_path``, else ``<run_dir>/checkpoints/<checkpoint>.ckpt``; default ``last``: the weights
  ``metrics.json``'s test numbers were measured with) and loaded from it; a run directory whose
  config (``config_resolved.yaml``) names another model or method is refused. Nothing read from
  disk is instantiated. ``packed=true`` evaluates the packed export instead
  (``<run_dir>/packed.safetensors``, written by :func:`bnnbench.export.export_run` first if it is
  not there yet, or ``packed_path``).
* Data: the run's data (the checkpoint's spec), with its preprocessing, unless ``data=<name>``
  picks another option of the ``data/`` config group (composed from ``conf/`` as a run composes
  it, ``data.<key>=<value>`` then edits it); without ``data=``, ``+data.<key>=<value>`` edits the
  run's data arguments. How the data is read (``batch_size``, ``eval_batch_size``,
  ``num_workers``, ``download``) is never taken from the run's files: the data module's defaults
  unless given here; image counts a file asks for are bounded (:data:`MAX_FILE_IMAGES`). Only
  the test split is read (e.g. ``data=mnist`` needs only the t10k
  files). The dataset's geometry (channels, size, classes) must match the run's.
* Output: top-1 / top-5 printed and written to ``eval.json`` in the run directory (or ``out``: a
  file, or a directory; ``ckpt_path`` alone: the Hydra run dir); when that exists,
  ``eval-<data>[-packed].json`` (then ``-1``, ``-2``, ...): nothing already written is replaced,
  and ``metrics.json`` is never touched. No training run directory is claimed or written.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bnnbench.errors import BnnbenchError
from bnnbench.export import PACKED_FILE, export_run
from bnnbench.files import free_path, read_json, write_atomic
from bnnbench.packed.format import load_packed, packed_spec
from bnnbench.spec import (
    GEOMETRY_KEYS,
    Spec,
    build_data,
    check_plain,
    data_geometry,
    data_section,
)
from bnnbench.trained import load_trained, resolve_source

EVAL_FILE = "eval.json"


def resolve_data(run_spec: Spec, data: Mapping[str, Any] | None) -> tuple[Spec, str | None]:
    """(a spec whose data section is what to evaluate on, its name if another dataset was chosen).

    ``data``: a composed ``data/`` group option (it has a ``_target_``, compared with the
    registered data modules as a string, never imported), or plain edits of the run's data
    arguments, or None (the run's data). The run's arguments are read from a file, so
    evaluation keeps only those that say which images (:func:`file_data_args`).
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
    if not data:
        data = {}
    if "_target_" in data:
        section = data_section(data, "data")
        return {**run_spec, "data": section}, section["name"]
    edits = check_plain(dict(data), "data")
    args = {**file_data_args(run_spec["data"]["args"], edits), **edits}
    return {**run_spec, "data": {"name": run_spec["data"]["name"], "args": args}}, None


#: how the data is read, not which images: never taken from a file (the data module's defaults
#: unless the user sets them with ``+data.<key>=``), so a file cannot pick the worker count or
#: make evaluation download anything
USER_DATA_ARGS = ("batch_size", "eval_batch_size", "num_workers", "download")
#: image counts a file may ask evaluation to generate (synthetic data draws its test images
#: after its training and validation ones); larger only when the user passes them
MAX_FILE_IMAGES = 100_000
SIZE_ARGS = ("num_samples", "num_val", "num_test")


def file_data_args(args: Mapping[str, Any], edits: Mapping[str, Any]) -> dict[str, Any]:
    """The run's (file's) data arguments that evaluation keeps: without :data:`USER_DATA_ARGS`,
    and with every :data:`SIZE_ARGS` count the user does not set within :data:`MAX_FILE_IMAGES`
    (one line otherwise)."""
    kept = {k: v for k, v in args.items() if k not in USER_DATA_ARGS}
    for key in SIZE_ARGS:
        value = kept.get(key)
        if key not in edits and isinstance(value, int) and value > MAX_FILE_IMAGES:
            raise BnnbenchError(f"the run's data asks for data.{key}={value} images, more than "
                                f"the {MAX_FILE_IMAGES:,} evaluation takes from a file; pass "
                                f"+data.{key}=<n> to choose it yourself")
    return kept


def run_data_name(run_dir: Path | None, spec: Spec) -> str:
    """The run's data option (metrics.json, else the spec's data name)."""
    try:  # bounded: a run directory's metrics.json is data (size, nesting)
        return str(read_json(Path(run_dir) / "metrics.json")["data"])
    except (TypeError, BnnbenchError, KeyError):
        return spec["data"]["name"]


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BnnbenchError(f"device={device!r} is not a torch device (auto, cpu, cuda)") from err
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise BnnbenchError(f"device={device} but torch sees {torch.cuda.device_count()} CUDA "
                            "device(s) here; use device=cpu or device=auto")
    return dev


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    """Top-1/top-5 (percent) and example count over a loader, in eval mode."""
    from bnnbench.lit import topk_correct

    net.eval().to(device)
    n = top1 = top5 = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        c1, c5 = topk_correct(net(x), y)
        top1 += int(c1)
        top5 += int(c5)
        n += len(y)
    if n == 0:
        raise BnnbenchError("the test split is empty")
    return {"top1": round(100 * top1 / n, 4), "top5": round(100 * top5 / n, 4), "n": n}


def result_path(out: Path | None, default_dir: Path, name: str, packed: bool) -> Path:
    """Where the record goes: ``out`` (a .json file, or a directory), else ``default_dir``;
    ``eval.json`` unless taken, then ``eval-<data>[-packed].json`` (``-1``, ``-2``, ...)."""
    if out is not None and Path(out).suffix == ".json":
        return free_path(Path(out))
    directory = Path(out) if out is not None else default_dir
    path = directory / EVAL_FILE
    if path.exists():
        # the name may come from the run's metrics.json: one plain file name, in ``directory``
        plain = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:100] or "data"
        path = free_path(directory / f"eval-{plain}{'-packed' if packed else ''}.json")
    return path


def evaluate_run(run_dir: Path | None, data: Mapping[str, Any] | None = None,
                 packed: bool = False, checkpoint: str = "last",
                 packed_path: Path | None = None, device: str = "auto",
                 ckpt_path: Path | None = None, out: Path | None = None,
                 ) -> tuple[dict[str, Any], Path]:
    """Evaluate; returns (the record written, the path of the json file).

    ``run_dir`` and/or ``ckpt_path`` name the trained weights
    (:func:`bnnbench.trained.resolve_source`; with ``packed`` and ``packed_path`` none are
    needed); ``data`` as :func:`resolve_data`; ``out`` as :func:`result_path` (default: the run
    directory, or the current directory for a checkpoint outside any run directory).
    """
    if packed and packed_path:  # the export alone: no checkpoint needed
        run_dir, ckpt = (Path(run_dir) if run_dir is not None else None), None
    else:
        run_dir, ckpt = resolve_source(run_dir, ckpt_path, checkpoint)
    home = run_dir if run_dir is not None else Path.cwd()
    dev = pick_device(device)
    if packed:
        path = Path(packed_path) if packed_path else home / PACKED_FILE
        if not path.exists() and not packed_path:
            path = export_run(run_dir, path, ckpt_path=ckpt)
        net = load_packed(path, device=dev)
        trained_spec, trained_geometry = packed_spec(path)
        source = str(path)
    else:
        net, trained_spec, trained_geometry = load_trained(run_dir, ckpt_path=ckpt)
        source = str(ckpt)
    data_spec, data_name = resolve_data(trained_spec, data)
    geometry = data_geometry(data_spec)
    if geometry != trained_geometry:
        diff = ", ".join(f"{k} {geometry[k]} vs {trained_geometry[k]}" for k in GEOMETRY_KEYS
                         if geometry[k] != trained_geometry[k])
        raise BnnbenchError(f"the data does not fit the run's model: {diff} (data vs run)")
    dm = build_data(data_spec)
    dm.setup("test")  # the test split only: a dataset's training files need not be there
    start = time.perf_counter()
    scores = test_accuracy(net, dm.test_dataloader(), dev)
    name = data_name or run_data_name(run_dir, data_spec)
    record = {
        "data": name, "split": "test", **scores, "packed": packed, "source": source,
        "checkpoint": None if ckpt is None else str(ckpt), "device": str(dev),
        "eval_time_s": round(time.perf_counter() - start, 3),
        "data_config": {"name": data_spec["data"]["name"], **data_spec["data"]["args"]},
    }
    path = result_path(out, home, name, packed)
    # a new file only: an evaluation racing this one for the same name is refused, not lost
    write_atomic(path, json.dumps(record, indent=2) + "\n", replace=False)
    return record, path


def evaluate_config(cfg: Any) -> dict[str, Any]:
    """The Hydra app's job: ``cfg`` composed from conf/evaluate.yaml (see the module doc)."""
    from bnnbench.cli import output_of

    if not isinstance(cfg.packed, bool):
        raise BnnbenchError(f"packed={cfg.packed!r} is not a boolean: packed=true or packed=false")
    record, path = evaluate_run(
        cfg.run_dir, cfg.get("data"), packed=cfg.packed, checkpoint=str(cfg.checkpoint),
        packed_path=cfg.packed_path, device=str(cfg.device), ckpt_path=cfg.ckpt_path,
        out=output_of(cfg))
    kind = "packed export" if record["packed"] else f"checkpoint {record['checkpoint']}"
    print(f"{record['data']} test ({record['n']:,} examples), {kind}: top-1 {record['top1']:.2f}%, "
          f"top-5 {record['top5']:.2f}%")
    print(f"wrote {path}")
    return record


def main() -> None:
    """``python -m bnnbench.evaluate`` / ``bnnbench evaluate``: a Hydra app (conf/evaluate.yaml)."""
    from bnnbench.cli import hydra_app

    hydra_app("evaluate", evaluate_config)()


if __name__ == "__main__":
    main()
