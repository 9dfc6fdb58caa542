"""What a network is, as plain data: registry names plus plain arguments, never code to run.

A *run spec* is the JSON-able dict every saved artifact carries (the run directory's config, each
checkpoint, each packed export)::

    {"model":  {"name": "mlp", "kwargs": {"hidden_features": 1024, ...}},
     "method": {"name": "bnn", "knobs": {"stochastic": false, ...}},
     "data":   {"name": "mnist5k", "args": {"batch_size": 100, ...}}}

Networks, methods and data modules are built from it only through the registries
(:func:`bnnbench.models.create_model`, :func:`bnnbench.methods.create_method`,
:func:`bnnbench.data.create_data`). A config read from a file is data: its ``_target_`` strings
are only *compared* with the registered classes (:func:`spec_from_config`), never imported, and
anything Hydra would instantiate inside an argument is refused. So a shared run directory or export
cannot run code, whatever it holds.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from bnnbench.errors import BnnbenchError

GEOMETRY_KEYS = ("in_chans", "num_classes", "img_size")
# Sane bounds for a geometry read from a file: anything real fits, while a crafted img_size=1e6
# cannot ask for petabytes (and the tensors on disk must match the model on top of this).
GEOMETRY_LIMITS = {"in_chans": 1024, "num_classes": 1_000_000, "img_size": 4096}
MODEL_TARGETS = ("bnnbench.models.create_model", "bnnbench.models.registry.create_model")
# Hydra's instantiation keys: meaningless in plain arguments, and a sign of a crafted file.
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
# timm keyword arguments that read files or the network: refused in a model's kwargs.
LOADING_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                            "checkpoint_path", "cache_dir"})
SECTIONS = {"model": "kwargs", "method": "knobs", "data": "args"}
# a timm architecture name and an optional pretrained tag: no scheme (hf-hub:, local-dir:), no path
PLAIN_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")
# where a Lightning checkpoint keeps the spec it was trained with
CHECKPOINT_SPEC_KEY = "bnnbench_spec"

Spec = dict[str, dict[str, Any]]


# ---------------------------------------------------------------------------------- checks
def check_plain(value: Any, where: str) -> Any:
    """``value`` if it is plain data (str, finite number, bool, None, lists and str-keyed dicts of
    those) without Hydra instantiation keys; BnnbenchError naming ``where`` otherwise."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BnnbenchError(f"{where}={value} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [check_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise BnnbenchError(f"{where} has a non-string key {key!r:.40}")
            if not key.isprintable():  # a newline in a key would split the one-line message
                raise BnnbenchError(f"{where} has a key {key!r:.40} that is not printable text")
            if key in HYDRA_KEYS:
                raise BnnbenchError(f"{where}.{key} is refused: a saved config is data, and "
                                    "bnnbench never instantiates a class path read from a file")
            out[key] = check_plain(v, f"{where}.{key[:40]}")
        return out
    raise BnnbenchError(f"{where} holds a {type(value).__name__}, not plain data")


def check_geometry(geometry: Any, where: str = "geometry") -> dict[str, int]:
    """``in_chans``, ``num_classes``, ``img_size``: positive ints within :data:`GEOMETRY_LIMITS`."""
    if not isinstance(geometry, Mapping) or set(geometry) != set(GEOMETRY_KEYS):
        got = sorted(geometry) if isinstance(geometry, Mapping) else geometry
        raise BnnbenchError(f"{where} must hold exactly {', '.join(GEOMETRY_KEYS)}; got {got!r:.80}")
    for key in GEOMETRY_KEYS:
        value = geometry[key]
        if type(value) is not int or not 1 <= value <= GEOMETRY_LIMITS[key]:
            raise BnnbenchError(f"{where}.{key}={value!r:.40} is not an integer in "
                                f"1..{GEOMETRY_LIMITS[key]}")
    return {k: int(geometry[k]) for k in GEOMETRY_KEYS}


def check_spec(spec: Any, where: str) -> Spec:
    """A spec read from anywhere: the three sections, registered names, plain arguments."""
    from bnnbench.data import DATA_MODULES
    from bnnbench.methods import list_methods

    if not isinstance(spec, Mapping) or set(spec) != set(SECTIONS):
        raise BnnbenchError(f"{where} must hold exactly {', '.join(SECTIONS)} "
                            "(written by another version of bnnbench?)")
    out: Spec = {}
    for section, args_key in SECTIONS.items():
        part = spec[section]
        if not isinstance(part, Mapping) or set(part) != {"name", args_key} \
                or not isinstance(part["name"], str) or not isinstance(part[args_key], Mapping):
            raise BnnbenchError(f"{where}.{section} must be {{name: <str>, {args_key}: {{...}}}}")
        out[section] = {"name": part["name"],
                        args_key: check_plain(part[args_key], f"{where}.{section}.{args_key}")}
    check_model_name(out["model"]["name"], f"{where}.model.name")
    if out["method"]["name"] not in list_methods():
        raise BnnbenchError(f"{where}.method.name={out['method']['name']!r:.60} is not a registered "
                            f"method ({', '.join(list_methods())})")
    if out["data"]["name"] not in DATA_MODULES:
        raise BnnbenchError(f"{where}.data.name={out['data']['name']!r:.60} is not a registered data "
                            f"module ({', '.join(sorted(DATA_MODULES))})")
    refused = LOADING_KWARGS & set(out["model"]["kwargs"]) | set(GEOMETRY_KEYS) & set(
        out["model"]["kwargs"])
    if refused:
        raise BnnbenchError(f"{where}.model.kwargs.{min(refused)} is refused (the geometry "
                            "comes from the data; bnnbench never loads pretrained files)")
    return out


def check_model_name(name: str, where: str) -> str:
    """A registered model's name, or a plain timm architecture name (``resnet18``, optionally
    with a pretrained tag, ``resnet18.a1_in1k``): letters, digits and ``_`` only, so never a
    ``hf-hub:`` or ``local-dir:`` name that makes timm read the network or a path."""
    from bnnbench.models import list_models

    if name in list_models():
        return name
    if PLAIN_TIMM_NAME.fullmatch(name):
        import timm

        if timm.is_model(name):
            return name
    raise BnnbenchError(f"{where}={name[:80]!r} is not a registered model or a plain timm model "
                        f"name (registered: {', '.join(list_models())})")


# ---------------------------------------------------------------------------------- configs
def _section(cfg: Any, key: str, where: str) -> dict[str, Any] | None:
    """One config node as a plain dict (resolved), None when absent."""
    from omegaconf import DictConfig, OmegaConf

    node = cfg.get(key) if isinstance(cfg, (Mapping, DictConfig)) else None
    if node is None:
        return None
    try:
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) \
            else node
    except Exception as err:  # an interpolation that does not resolve
        raise BnnbenchError(f"{where}.{key} does not resolve: {str(err).splitlines()[0]}") from err
    if not isinstance(plain, Mapping):
        raise BnnbenchError(f"{where}.{key} must be a mapping, not {type(plain).__name__}")
    return dict(plain)


def spec_from_config(cfg: Any, where: str = "config") -> Spec:
    """The run spec of a Hydra-shaped config (composed, or read from a run directory).

    Each ``_target_`` must name a registered class exactly (compared as a string, never imported):
    ``model`` the model registry's ``create_model`` with a ``name``; ``method`` a registered
    method's class (no method: ``fp``); ``data`` a registered data module's class.
    """
    from bnnbench.methods import get_method_class, list_methods

    model = _section(cfg, "model", where)
    data = _section(cfg, "data", where)
    if model is None or data is None:
        raise BnnbenchError(f"{where} has no {'model' if model is None else 'data'} section; "
                            "is it a config written by `python -m bnnbench`?")
    if model.pop("_target_", None) not in MODEL_TARGETS or not isinstance(model.get("name"), str):
        raise BnnbenchError(f"{where}.model must be the model registry's create_model with a "
                            "name (conf/model/*.yaml)")
    model_name = model.pop("name")

    method = _section(cfg, "method", where) or {"_target_": "bnnbench.methods.fp.FullPrecision"}
    by_class = {_class_path(get_method_class(n)): n for n in list_methods()}
    method_name = by_class.get(str(method.pop("_target_", None)))
    if method_name is None:
        raise BnnbenchError(f"{where}.method is not a registered method's class; use "
                            f"+method=<name> with one of {', '.join(list_methods())}")

    return check_spec({"model": {"name": model_name, "kwargs": model},
                       "method": {"name": method_name, "knobs": method},
                       "data": data_section(data, f"{where}.data")}, where)


def data_section(data: Mapping[str, Any], where: str = "data") -> dict[str, Any]:
    """``{"name", "args"}`` of a data config node (plain, resolved): its ``_target_`` must be a
    registered data module's class (compared as a string, never imported)."""
    from bnnbench.data import data_name_of

    args = dict(data)
    name = data_name_of(str(args.pop("_target_", None)))
    if name is None:
        raise BnnbenchError(f"{where} is not a registered data module (conf/data/*.yaml)")
    return {"name": name, "args": check_plain(args, f"{where}")}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------------- builders
def build_method(spec: Spec) -> Any:
    """The spec's binarization method, through the method registry."""
    from bnnbench.methods import create_method

    name, knobs = spec["method"]["name"], spec["method"]["knobs"]
    try:
        return create_method(name, **knobs)
    except TypeError as err:  # an unknown knob
        raise BnnbenchError(f"method {name!r}: {str(err)[:200]}") from err


def build_model(spec: Spec, geometry: dict[str, int]) -> nn.Module:
    """The spec's full-precision architecture for ``geometry``, through the model registry."""
    from bnnbench.models import create_model

    geometry = check_geometry(geometry)
    name, kwargs = spec["model"]["name"], spec["model"]["kwargs"]
    try:
        return create_model(name, **geometry, **kwargs)
    except TypeError as err:  # an unknown keyword
        raise BnnbenchError(f"model {name!r:.60}: {str(err)[:200]}") from err


def as_spec(spec_or_config: Any) -> Spec:
    """A spec as is (checked), or the spec of a composed Hydra config (e.g. from
    ``hydra.compose``; :func:`spec_from_config` reads it as data all the same)."""
    from omegaconf import DictConfig

    if isinstance(spec_or_config, DictConfig):
        return spec_from_config(spec_or_config)
    return check_spec(spec_or_config, "spec")


def build_net(spec: Spec | Any, geometry: dict[str, int]) -> nn.Module:
    """``method.convert(model(geometry))``: the network a run trains and an export stores.
    ``spec`` may also be a composed config (:func:`as_spec`)."""
    spec = as_spec(spec)
    return build_method(spec).convert(build_model(spec, geometry))


def build_data(spec: Spec) -> Any:
    """The spec's data module, through the data registry (reads no file until ``setup``)."""
    from bnnbench.data import create_data

    return create_data(spec["data"]["name"], **spec["data"]["args"])


def data_geometry(spec: Spec) -> dict[str, int]:
    """``in_chans``, ``num_classes``, ``img_size`` of the spec's data, checked."""
    return geometry_of(build_data(spec), spec["data"]["name"])


def geometry_of(datamodule: Any, name: str) -> dict[str, int]:
    """A built data module's geometry, checked (integral numbers become ints)."""
    values = {k: getattr(datamodule, k, None) for k in GEOMETRY_KEYS}
    values = {k: int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
              for k, v in values.items()}
    return check_geometry(values, f"data {name}")
