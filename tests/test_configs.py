"""Every shipped config file composes and instantiates (from the YAML, not configs built by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bnnbench.methods import list_methods
from tests.conftest import CONF

GROUPS = ("data", "model", "optimizer", "scheduler", "trainer", "logger", "method", "sweep",
          "preset", "callbacks", "paths", "debug", "recipe")
# Options that need a value the user must give (``???`` in the YAML).
REQUIRED = {("model", "timm"): ["model.name=resnet18"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def override(group: str, option: str) -> str:
    # `method`, `sweep`, `preset` and `recipe` are not in the defaults list: they are added with
    # `+`, as users type it.
    added = ("method", "sweep", "preset", "recipe")
    return f"+{group}={option}" if group in added else f"{group}={option}"


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}/{o}" for g, o in CASES])
def test_config_file_composes_and_instantiates(make_cfg, group, option):
    cfg = make_cfg([override(group, option), *REQUIRED.get((group, option), [])])
    if group == "sweep":  # a table: fixes one method, or sweeps over all of them (+method=...)
        params = OmegaConf.load(CONF / "sweep" / f"{option}.yaml").hydra.sweeper.params
        # the method comes from `+method=...`, or from a nested group's options (tang_fig2's
        # `+sweep/tang_fig2_net=bnn,fp`, each of which picks one)
        swept = "+method" in params or any(k.startswith("+sweep/") for k in params)
        assert ("method" in cfg) != swept
        return
    if group == "preset":  # a paper's experiment: its method, model and data together
        data = instantiate(cfg.data)
        net = instantiate(cfg.model, in_chans=data.in_chans, num_classes=data.num_classes,
                          img_size=data.img_size)
        assert instantiate(cfg.method).convert(net) is not None
        return
    if group == "recipe":  # runs of runs (bnnbench.train.run_stages; tests/test_recipes.py)
        assert cfg.recipe.name == option
        return
    if group == "debug":  # global: it changes the trainer (tests/test_conventions.py checks how)
        assert instantiate(cfg.trainer, logger=False) is not None
        return
    node = cfg[group]
    if group == "model":
        data = instantiate(cfg.data)
        obj = instantiate(node, in_chans=data.in_chans, num_classes=data.num_classes,
                          img_size=data.img_size)
    elif group == "optimizer":
        import torch

        obj = instantiate(node)([torch.nn.Parameter(torch.zeros(1))])
    elif group == "scheduler":
        import torch

        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        obj = instantiate(node)(opt)
    elif group == "trainer":
        obj = instantiate(node, logger=False, accelerator="cpu", devices=1, strategy="auto")
    else:
        obj = instantiate(node)
    assert obj is not None


def test_method_registry_equals_config_files():
    assert list_methods() == options("method")


def test_every_config_file_is_tested():
    # hydra/default: Hydra's settings of a run (tests/test_size.py composes it with and without)
    tested = {(g, o) for g, o in CASES} | {("hydra", "default")}
    on_disk = {(p.parent.name, p.stem) for p in Path(CONF).glob("*/*.yaml")}
    assert on_disk <= tested, f"config groups not covered: {sorted(on_disk - tested)}"
