"""Evaluate a trained run (or its packed export) on the test split of any configured dataset.

``python -m bnnbench.evaluate run_dir=<dir> [data=<name>] [data.<key>=<value> ...]
[packed=true] [checkpoint=last|best|<file.ckpt>] [packed_path=<file>] [device=auto|cpu|cuda]``

* The network is rebuilt through the registries from the spec stored in
  ``checkpoints/<checkpoint>.ckpt`` (default ``last``: the weights ``metrics.json``'s test numbers
  were measured with) and loaded from it; a run directory whose config (``config_resolved.yaml``)
  names another model or method is refused. Nothing read from disk is instantiated.
  ``packed=true`` evaluates the packed export instead (``<run_dir>/packed.safetensors``, written
  by :func:`bnnbench.export.export_run` first if it is not there yet, or ``packed_path``).
* Data: the run's data (the checkpoint's spec), with its preprocessing, unless ``data=<name>``
  picks another config group option (composed from ``conf/`` exactly as a run composes it, with
  any ``data.<key>=<value>``); ``data.<key>=<value>`` alone edits the run's data arguments. The
  test split is used. The dataset's geometry (channels, size, classes) must match the run's.
* Output: top-1 / top-5 printed and written to ``<run_dir>/eval.json``; when that exists,
  ``eval-<data>[-packed].json`` (then ``-1``, ``-2``, ...): nothing already written is replaced,
  and ``metrics.json`` is never touched.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bnnbench.errors import BnnbenchError, call_or_exit
from bnnbench.export import (
    PACKED_FILE,
    export_run,
    free_path,
    load_packed,
    load_trained,
    read_packed,
)
from bnnbench.files import write_atomic
from bnnbench.spec import (
    GEOMETRY_KEYS,
    Spec,
    build_data,
    check_plain,
    data_geometry,
    spec_from_config,
)

EVAL_FILE = "eval.json"
OPTIONS = ("run_dir", "packed", "checkpoint", "packed_path", "device")
USAGE = ("usage: python -m bnnbench.evaluate run_dir=<dir> [data=<name>] [data.<key>=<value>] "
         "[packed=true] [checkpoint=last|best|<file.ckpt>] [packed_path=<file>] "
         "[device=auto|cpu|cuda]")


def compose_data(overrides: list[str]) -> Spec:
    """The spec of conf/config.yaml composed with CLI-style ``data...`` overrides (its data
    section is what matters)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bnnbench import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception as err:  # hydra: unknown option / key; one line with its hint
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise BnnbenchError(text) from err
    finally:
        GlobalHydra.instance().clear()
    return spec_from_config(cfg, "data=" + " ".join(overrides))


def resolve_data(run_spec: Spec, overrides: list[str]) -> tuple[Spec, str | None]:
    """(a spec whose data section is what to evaluate on, its name if chosen with ``data=``)."""
    from omegaconf import OmegaConf

    keys = [o.lstrip("+~").partition("=")[0] for o in overrides]
    if "data" in keys:
        composed = compose_data(overrides)
        return {**run_spec, "data": composed["data"]}, composed["data"]["name"]
    if not overrides:
        return run_spec, None
    dotlist = [o.lstrip("+")[len("data."):] for o in overrides]
    args = OmegaConf.merge(OmegaConf.create(run_spec["data"]["args"]),
                           OmegaConf.from_dotlist(dotlist))
    plain = check_plain(OmegaConf.to_container(args, resolve=True), "data")
    return {**run_spec, "data": {"name": run_spec["data"]["name"], "args": plain}}, None


def run_data_name(run_dir: Path, spec: Spec) -> str:
    """The run's data option (metrics.json, else the spec's data name)."""
    try:
        return str(json.loads((run_dir / "metrics.json").read_text())["data"])
    except (OSError, ValueError, KeyError):
        return spec["data"]["name"]


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise BnnbenchError(f"device={device!r} is not a torch device") from err


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


def evaluate_run(run_dir: Path, data_overrides: list[str] | None = None, packed: bool = False,
                 checkpoint: str = "last", packed_path: Path | None = None,
                 device: str = "auto") -> tuple[dict[str, Any], Path]:
    """Evaluate; returns (the record written, the path of the json file)."""
    run_dir = Path(run_dir)
    dev = pick_device(device)
    if packed:
        path = Path(packed_path) if packed_path else run_dir / PACKED_FILE
        if not path.exists() and not packed_path:
            path = export_run(run_dir, path, checkpoint)
        net = load_packed(path, device=dev)
        trained_spec, trained_geometry, _, _ = read_packed(path)
        source = str(path)
    else:
        net, trained_spec, trained_geometry = load_trained(run_dir, checkpoint)
        source = str(run_dir / "checkpoints" / f"{checkpoint}.ckpt") \
            if not checkpoint.endswith(".ckpt") else checkpoint
    data_spec, data_name = resolve_data(trained_spec, list(data_overrides or []))
    geometry = data_geometry(data_spec)
    if geometry != trained_geometry:
        diff = ", ".join(f"{k} {geometry[k]} vs {trained_geometry[k]}" for k in GEOMETRY_KEYS
                         if geometry[k] != trained_geometry[k])
        raise BnnbenchError(f"the data does not fit the run's model: {diff} (data vs run)")
    dm = build_data(data_spec)
    dm.setup("test")
    start = time.perf_counter()
    scores = test_accuracy(net, dm.test_dataloader(), dev)
    name = data_name or run_data_name(run_dir, data_spec)
    record = {
        "data": name, "split": "test", **scores, "packed": packed, "source": source,
        "checkpoint": checkpoint, "device": str(dev),
        "eval_time_s": round(time.perf_counter() - start, 3),
        "data_config": {"name": data_spec["data"]["name"], **data_spec["data"]["args"]},
    }
    out = run_dir / EVAL_FILE
    if out.exists():
        out = free_path(run_dir / f"eval-{name}{'-packed' if packed else ''}.json")
    write_atomic(out, json.dumps(record, indent=2) + "\n")
    return record, out


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    data: list[str] = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        bare = key.lstrip("+~")
        if eq and (bare == "data" or bare.startswith("data.")):
            data.append(arg)
        elif eq and key in OPTIONS:
            opts[key] = value
        else:
            raise BnnbenchError(f"unexpected argument {arg!r}; {USAGE}")
    if "run_dir" not in opts:
        raise BnnbenchError(f"run_dir is required; {USAGE}")
    return opts, data


def _truthy(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BnnbenchError(f"packed={value!r} is not a boolean (true/false)")


def _cli(argv: list[str]) -> dict[str, Any]:
    opts, data = parse_args(argv)
    record, path = evaluate_run(Path(opts["run_dir"]), data, _truthy(opts.get("packed", "false")),
                                opts.get("checkpoint", "last"), opts.get("packed_path"),
                                opts.get("device", "auto"))
    kind = "packed export" if record["packed"] else f"checkpoint {record['checkpoint']}"
    print(f"{record['data']} test ({record['n']:,} examples), {kind}: top-1 {record['top1']:.2f}%, "
          f"top-5 {record['top5']:.2f}%")
    print(f"wrote {path}")
    return record


def main(argv: list[str] | None = None) -> None:
    call_or_exit(_cli, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
