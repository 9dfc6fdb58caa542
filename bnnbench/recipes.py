"""Training recipes that compose with any method: warm start (``init=``) and knowledge
distillation from a teacher run (``teacher=``, ``kd.temperature``, ``kd.weight``).

``init=<run dir or .ckpt>`` starts a run from another run's weights, mapped by name: a
full-precision run (Bi-Real Net's and DoReFa's recipe: train the real network first), or stage 1
of a two-stage recipe (ReActNet's step 1, ``method.binary_weights=false``, then step 2 from it).
The latent weights of a binary layer take the source layer's real weights; every other tensor
(BatchNorm affine and statistics, shifts, slopes, the real first and last layers) is copied where
the name and the shape agree. A method that wraps a layer (``<name>.layer``: XNOR-Net's input
BatchNorm, Bi-Real units on plain hosts) still finds its source ``<name>``, and a BatchNorm that
``convert`` moved into a Bi-Real unit (``<name>.norm``) its host name. The optimizer, the
epoch and the RNG start fresh (``ckpt_path=`` is the way to *resume* a run).

``teacher=<run dir>`` trains with ``(1 - kd.weight) * method loss + kd.weight * KD``
(:func:`distillation_loss`); ReActNet's recipe is ``kd.weight=1 kd.temperature=1``.
``teacher=timm:<name>`` builds timm's model of that name with the weights of
``teacher_weights=<file>`` or, without it, timm's pretrained weights where the timm/Hugging Face
cache already holds them (:func:`timm_teacher`; nothing is downloaded).

Recipes in stages (``+recipe=<name>``, conf/recipe/), each stage a run directory of its own,
stage 2 using stage 1's run through ``init=`` or ``teacher=`` (:data:`STAGE1_LINK`):

* ``two_stage`` (ReActNet's and Real-to-Binary's): stage 1 trains binary activations with real
  weights (``method.binary_weights=false``), stage 2 binary weights too, initialised from stage
  1's ``last.ckpt`` by :func:`warm_start`;
* ``fp_init`` (Bi-Real Net's and DoReFa's): stage 1 trains the full-precision network of the same
  host with every ReLU replaced by clip(-1, x, 1) (Bi-Real Sec. 3.4; ``recipe.stage1.method.
  activation=relu`` keeps the ReLUs), stage 2 the method warm-started from it;
* ``fp_teacher``: stage 1 the same full-precision network, stage 2 the method distilling from it
  (``teacher=``, ReActNet's distributional loss at the defaults ``kd.weight=1 kd.temperature=1``).

A stage without binary weights (the full-precision stage, ``binary_weights=false``) has nothing
for Bop to flip: with ``optimizer=bop`` it trains with Adam at Bop's ``lr``, ``betas``, ``eps``
and ``weight_decay`` (the optimizer Bop applies to every real parameter anyway), and the stage
with binary weights with Bop (:func:`stage_optimizer`). That is ReActNet's and Real-to-Binary's
stage 1 (Adam on real weights) followed by Helwegen et al.'s Bop on the binary network, so one
``optimizer=bop`` means "Bop where there are binary weights". :func:`stage_config` derives each
stage's config, the run loop is :func:`bnnbench.train.run_stages`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from bnnbench.errors import BnnbenchError

_ABSENT = object()


@dataclasses.dataclass
class WarmStart:
    """What a warm start copied: ``loaded`` target names; ``kept`` target tensors left as
    initialised (no source of that name and shape); the source checkpoint."""

    source: str
    loaded: list[str]
    kept: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "loaded": len(self.loaded), "kept": len(self.kept),
                "kept_names": self.kept[:20]}


def source_names(target: str, moved: Mapping[str, str] | None = None) -> list[str]:
    """Names a target tensor may have had in the source network, most specific first:
    itself, then with each ``.layer`` wrapper removed, then (``moved``: ``{module name now:
    its name in the host}``, :func:`bnnbench.methods.base.moved_from`) under the host name of
    the module that ``convert`` moved it with (a BatchNorm inside a Bi-Real unit)."""
    names = [target]
    parts = target.split(".")
    if "layer" in parts:
        names.append(".".join(p for p in parts if p != "layer"))
    for now, before in (moved or {}).items():
        if target.startswith(f"{now}."):
            names.append(before + target[len(now):])
    return names


def init_checkpoint(source: str | Path) -> Path:
    """A run directory's ``checkpoints/last.ckpt``, or the ``.ckpt`` file itself."""
    from bnnbench.trained import checkpoint_path

    path = Path(source)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise BnnbenchError(f"init={path} is not a file; pass a run directory or a .ckpt")
        return path
    if not path.is_dir():
        raise BnnbenchError(f"init={path} is neither a run directory nor a .ckpt file")
    return checkpoint_path(path, "last")


def warm_start(net: nn.Module, source: str | Path) -> WarmStart:
    """Copy the source checkpoint's tensors into ``net`` by name (see the module docstring).

    Tensors inside weight quantizers are never copied (they are recomputed from the latent
    weights). A source that shares no tensor with ``net`` is refused with one line.
    """
    from bnnbench.methods.base import moved_from
    from bnnbench.trained import load_checkpoint

    path = init_checkpoint(source)
    state, _spec = load_checkpoint(path)
    loaded, kept = [], []
    target = net.state_dict()
    moved = moved_from(net)
    with torch.no_grad():
        for name, tensor in target.items():
            if ".weight_quantizer." in f".{name}" or name.endswith("num_batches_tracked"):
                continue
            match = next((state[s] for s in source_names(name, moved)
                          if s in state and tuple(state[s].shape) == tuple(tensor.shape)), None)
            if match is None:
                kept.append(name)
                continue
            tensor.copy_(match.to(dtype=tensor.dtype, device=tensor.device))
            loaded.append(name)
    if not loaded:
        raise BnnbenchError(f"init={source}: {path} shares no tensor (same name and shape) with "
                            "this network; warm-start from a run of the same model")
    return WarmStart(str(path), loaded, kept)


# ---------------------------------------------------------------------------------- distillation
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    r"""Knowledge distillation on logits (Hinton et al. 2015):

        ``T^2 * mean_batch KL(softmax(t / T) || softmax(s / T))``

    with the teacher's logits ``t`` constant. At ``T = 1`` this is ReActNet's distributional loss
    (the authors' ``DistributionLoss``, ``-sum softmax(t) log_softmax(s)``) minus the teacher's
    entropy, a constant: the same gradient, ``dL/ds = softmax(s) - softmax(t)`` per sample
    (divided by the batch size). ``T^2`` keeps the gradient's scale as ``T`` grows.
    """
    t = temperature
    log_p = torch.log_softmax(student / t, dim=-1)
    q = torch.softmax(teacher.detach() / t, dim=-1)
    return torch.nn.functional.kl_div(log_p, q, reduction="batchmean") * t * t


TIMM_PREFIX = "timm:"


def load_teacher(source: str | Path, geometry: dict[str, int],
                 weights: str | Path | None = None) -> nn.Module:
    """A frozen teacher (eval mode, no gradients): ``timm:<name>`` is timm's model
    (:func:`timm_teacher`, with ``weights``); anything else is a trained run's directory, its
    network built from its own checkpoint spec. A run's data geometry must be this run's (the
    logits must mean the same classes)."""
    from bnnbench.trained import load_trained

    if str(source).startswith(TIMM_PREFIX):
        net = timm_teacher(str(source)[len(TIMM_PREFIX):], geometry, weights)
    else:
        if weights is not None:
            raise BnnbenchError(f"teacher_weights={weights} is for teacher=timm:<name>; a run "
                                f"teacher ({source}) uses its own checkpoint: drop it")
        path = Path(source)
        if not path.is_dir():
            raise BnnbenchError(f"teacher={source} is not a run directory; train the teacher "
                                "first (`python -m bnnbench model=...`) and pass its run "
                                "directory, or name a timm model as teacher=timm:<name>")
        net, _spec, teacher_geometry = load_trained(path)
        if teacher_geometry != geometry:
            raise BnnbenchError(f"teacher={source} was trained on data of geometry "
                                f"{teacher_geometry}, this run's is {geometry}; distil from a "
                                "teacher of the same classes and input size")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def timm_teacher(name: str, geometry: dict[str, int],
                 weights: str | Path | None = None) -> nn.Module:
    """timm's ``name`` for this run's classes and input channels, with the weights of
    ``weights`` (a state dict saved with ``torch.save`` or safetensors; a ``state_dict`` or
    ``model`` entry is unwrapped) or else timm's pretrained file where the Hugging Face or torch
    hub cache holds it (:func:`cached_pretrained`). bnnbench downloads nothing: without either,
    one line names the fix. The weights must fit exactly (same classifier size): a teacher with a
    fresh head would teach noise."""
    import timm

    if not name or not timm.is_model(name):
        raise BnnbenchError(f"teacher=timm:{name} is not a timm model name; pick one of "
                            "timm.list_models() (e.g. teacher=timm:resnet18)")
    net = timm.create_model(name, pretrained=False, num_classes=geometry["num_classes"],
                            in_chans=geometry["in_chans"])
    source = Path(weights) if weights is not None else cached_pretrained(net)
    if source is None:
        raise BnnbenchError(
            f"teacher=timm:{name} needs weights and bnnbench downloads none (none in the timm/"
            f"Hugging Face cache): pass teacher_weights=<state dict file of timm's {name} with "
            f"{geometry['num_classes']} classes>, or train the teacher as a run and pass "
            "teacher=<its run dir>")
    state = read_state_dict(source)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise BnnbenchError(f"{source} does not fit timm:{name} with {geometry['num_classes']} "
                            f"classes and {geometry['in_chans']} input channels ({detail}); pass "
                            "weights of that model for this data's classes") from err
    return net


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A tensor dict from a ``.safetensors`` file or a ``torch.save`` file (read with
    ``weights_only=True``: no code runs); a ``state_dict`` or ``model`` entry is unwrapped."""
    if not path.is_file():
        raise BnnbenchError(f"teacher_weights={path} is not a file; pass a saved state dict "
                            "(.pth/.pt/.safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BnnbenchError(f"teacher_weights={path} is not a readable state dict "
                            f"({type(err).__name__}); save one with torch.save(model."
                            "state_dict(), path)") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise BnnbenchError(f"teacher_weights={path} holds no state dict of tensors; save one "
                            "with torch.save(model.state_dict(), path)")
    return state


def cached_pretrained(net: nn.Module) -> Path | None:
    """timm's pretrained file for ``net`` if a cache already holds it, else None; never
    downloads. Looks where timm would fetch from: the Hugging Face hub cache (``hf_hub_id``:
    ``model.safetensors``, ``pytorch_model.bin``) and the torch hub cache (``url``)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []
        for filename in (*names, "model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE,
                                           revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
        if path.is_file():
            return path
    return None


# ---------------------------------------------------------------------------------- stages
TWO_STAGE = "two_stage"
#: the recipes in stages (conf/recipe/<name>.yaml), each with the key through which stage 2
#: uses stage 1's run: a warm start or a teacher
STAGE1_LINK = {TWO_STAGE: "init", "fp_init": "init", "fp_teacher": "teacher"}
RECIPES = tuple(STAGE1_LINK)
STAGES = (1, 2)
ADAM = "torch.optim.Adam"
#: Bop's knobs that are its Adam's (bnnbench.optimizers.Bop); threshold and gamma are its flips'
ADAM_KNOBS = ("lr", "betas", "eps", "weight_decay")


def _leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested dict."""
    keys = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys += _leaves(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


FULL_PRECISION = "bnnbench.methods.fp.FullPrecision"


def has_binary_weights(cfg: DictConfig) -> bool:
    """Whether a run's config binarizes weights: it has a method, not the full-precision
    reference, and not one with ``binary_weights=false``."""
    method = cfg.get("method")
    return (method is not None and method.get("_target_") != FULL_PRECISION
            and method.get("binary_weights", True) is not False)


def stage_optimizer(cfg: DictConfig) -> DictConfig | None:
    """Adam in place of Bop for a stage without binary weights (see the module docstring),
    with Bop's Adam knobs; None when the stage keeps its optimizer."""
    from hydra.utils import get_object

    from bnnbench.optimizers import takes_binary_groups

    node = cfg.get("optimizer")
    if node is None or has_binary_weights(cfg):
        return None
    try:
        target = get_object(str(node.get("_target_")))
    except Exception:  # noqa: BLE001 - validate() names a bad _target_
        return None
    if not takes_binary_groups(target):
        return None
    return OmegaConf.create({"_target_": ADAM, "_partial_": True,
                             **{k: node[k] for k in ADAM_KNOBS if k in node}})


def stage_config(cfg: DictConfig, stage: int, stage1_dir: Path | None = None) -> DictConfig:
    """The config of one stage of a recipe: the run's config with the recipe's ``stage<n>``
    settings merged in (conf/recipe/<name>.yaml; ``method: null`` is the full-precision network;
    a node with its own ``_target_`` replaces the run's instead of merging into it)
    and, for stage 2, ``<link>=<stage1_dir>`` (:data:`STAGE1_LINK`: ``init`` or ``teacher``);
    Bop becomes Adam in a stage without binary weights (:func:`stage_optimizer`). The stage
    records ``recipe: {name, stage}``. A setting the run's config lacks (a method without
    ``binary_weights``) is refused with one line."""
    recipe = OmegaConf.to_container(cfg.recipe, resolve=True)
    name = recipe.get("name")
    patch = recipe.get(f"stage{stage}") or {}
    if not isinstance(patch, dict):
        raise BnnbenchError(f"recipe.stage{stage} must be a mapping of settings, e.g. "
                            f"recipe.stage{stage}.optimizer.weight_decay=0")
    link = STAGE1_LINK[name]
    if cfg.get("method") is None:
        raise BnnbenchError(f"recipe={name} trains a binary network in its last stage and this "
                            "run has no method: add one, e.g. +method=reactnet")
    # a node with its own _target_ (fp_init's full-precision method) replaces the run's node
    replaced = [k for k, v in patch.items() if isinstance(v, dict) and "_target_" in v]
    for key in _leaves({k: v for k, v in patch.items() if k not in replaced}):
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            hint = ("stage 1 trains real weights with binary activations, which needs "
                    "method.binary_weights (+method=reactnet or +method=bireal)"
                    if key == "method.binary_weights" else
                    f"add it to the run's config, or drop recipe.stage{stage}.{key}")
            raise BnnbenchError(f"recipe={name} sets {key} in stage {stage}, and this run has "
                                f"no {key}: {hint}")
    out = copy.deepcopy(cfg)
    with open_dict(out):
        del out["recipe"]
        for key in replaced:
            out[key] = None
        out.merge_with(patch)
        out.recipe = {"name": name, "stage": stage}
        optimizer = stage_optimizer(out)
        if optimizer is not None:
            out.optimizer = optimizer
        if stage == 2:
            if stage1_dir is None:
                raise ValueError("stage 2 starts from stage 1's run directory")
            out[link] = str(stage1_dir)
    return out
