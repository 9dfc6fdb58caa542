"""The one interface every binarization method implements, and the layer-swapping helpers.

A method is one paper's recipe. It turns a full-precision architecture into the paper's binary
network (``convert``), and may adjust training: optimizer parameter groups (e.g. BinaryNet's
per-layer learning-rate scale), a regularizer (Tang's bipolar term), a step after each optimizer
update (clipping latent weights), and the loss (BinaryNet's squared hinge).

Methods are registered by name with :func:`register_method`; the name equals the config file
``conf/method/<name>.yaml``. A hook is added here only when a second method needs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError, check_knobs, check_range
from bnnbench.nn.layers import quantized_layers, set_submodule
from bnnbench.nn.quantizers import clamp_

_METHODS: dict[str, type["BinarizationMethod"]] = {}

LOSSES = ("cross_entropy", "squared_hinge")


def register_method(cls: type["BinarizationMethod"]) -> type["BinarizationMethod"]:
    """Class decorator: add a method to the registry under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_METHODS)


def get_method_class(name: str) -> type["BinarizationMethod"]:
    if name not in _METHODS:
        raise BnnbenchError(f"unknown method {name!r}; valid methods: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, **kwargs: Any) -> "BinarizationMethod":
    """Build a registered method by name (the Python twin of ``+method=<name>``)."""
    cls = get_method_class(name)
    check_knobs("method", cls, kwargs)  # a bool knob given 1, a bit width given 1.5: one line
    return cls(**kwargs)


def squared_hinge_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BinaryNet's loss: mean over outputs of max(0, 1 - t * y)^2 with t in {-1, +1} one-hot."""
    t = F.one_hot(target, logits.shape[-1]).to(logits.dtype) * 2 - 1
    return torch.clamp(1 - t * logits, min=0).pow(2).mean()


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise BnnbenchError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


class BinarizationMethod(ABC):
    """One paper's recipe (see each subclass's docstring for its math and reference).

    Args shared by every method:
        fp_first: keep the first conv/linear layer (which sees the image) full precision.
        fp_last: keep the last layer (the classifier) full precision.
        fp_shortcut: keep ResNet projection shortcuts (``downsample``) full precision.
        loss: ``cross_entropy`` or BinaryNet's ``squared_hinge``.
        label_smoothing: ``eps`` of the cross entropy with smoothed targets ``(1 - eps)
            onehot(y) + eps / K`` over ``K`` classes (Szegedy et al. 2016), the Bi-Real and
            ReActNet authors' ``CrossEntropyLabelSmooth`` (``--label_smooth 0.1`` in their
            train.py): ``(1 - eps) CE + eps * mean_k(-log p_k)``. Default 0, plain cross entropy.
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    binarizes: ClassVar[str] = ""

    def __init__(self, fp_first: bool = True, fp_last: bool = True, fp_shortcut: bool = False,
                 loss: str = "cross_entropy", label_smoothing: float = 0.0) -> None:
        check_choice("method.loss", loss, LOSSES)
        check_range("method.label_smoothing", label_smoothing, low=0, high=1)
        if label_smoothing and loss != "cross_entropy":
            raise BnnbenchError(f"method.label_smoothing={label_smoothing} smooths the cross "
                                f"entropy's targets and method.loss={loss}: set "
                                "method.loss=cross_entropy or method.label_smoothing=0")
        self.fp_first = fp_first
        self.fp_last = fp_last
        self.fp_shortcut = fp_shortcut
        self.loss_name = loss
        self.label_smoothing = label_smoothing

    @abstractmethod
    def convert(self, model: nn.Module) -> nn.Module:
        """Return the paper's binary version of ``model`` (may modify it in place)."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a group may carry ``lr_scale`` (default one group)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def regularizer(self, model: nn.Module) -> Tensor | None:
        """A term added to the training loss, or None."""
        return None

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after every optimizer step: clip latent weights of layers that ask for it."""
        for _, layer in quantized_layers(model):
            if layer.latent_clip is not None:
                clamp_(layer.weight, layer.latent_clip)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.loss_name == "squared_hinge":
            return squared_hinge_loss(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


# --- helpers to swap layers --------------------------------------------------------------------

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
#: the attribute a module moved to a new place by ``convert`` keeps its old name in (the float
#: host's), so that a warm start from the host finds its tensors (:func:`moved_from`)
MOVED_FROM = "bnnbench_moved_from"


def mark_moved(module: nn.Module, old_name: str) -> None:
    """Record that ``module`` stood at ``old_name`` of the host before ``convert`` moved it
    (e.g. a BatchNorm into a Bi-Real unit, :func:`bnnbench.methods.bireal.wrap_units`)."""
    if getattr(module, MOVED_FROM, None) is None:  # the host's name, not an intermediate one
        setattr(module, MOVED_FROM, old_name)


def moved_from(model: nn.Module) -> dict[str, str]:
    """``{name now: name in the host}`` of every module of ``model`` that ``convert`` moved."""
    return {name: getattr(m, MOVED_FROM) for name, m in model.named_modules()
            if getattr(m, MOVED_FROM, None) is not None}


def weight_layer_names(model: nn.Module) -> list[str]:
    """Names of every Conv2d/Linear in registration order (the order the models define them)."""
    return [name for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def is_shortcut(name: str) -> bool:
    """ResNet projection shortcuts: timm/torchvision call them ``downsample``."""
    return "downsample" in name.split(".") or "shortcut" in name.split(".")


def layers_to_binarize(model: nn.Module, fp_first: bool, fp_last: bool,
                       fp_shortcut: bool) -> list[str]:
    """Names of the Conv2d/Linear layers a method binarizes, per the first/last/shortcut rules."""
    names = weight_layer_names(model)
    keep = set()
    if fp_first and names:
        keep.add(names[0])
    if fp_last and names:
        keep.add(names[-1])
    if fp_shortcut:
        keep.update(n for n in names if is_shortcut(n))
    return [n for n in names if n not in keep]


def first_and_last(model: nn.Module) -> tuple[str, str]:
    names = weight_layer_names(model)
    if not names:
        raise BnnbenchError("the model has no Conv2d/Linear layer to binarize")
    return names[0], names[-1]


def replace_layers(model: nn.Module, names: Iterable[str],
                   factory: Callable[[str, nn.Module], nn.Module]) -> nn.Module:
    """Replace each named layer by ``factory(name, layer)``, in place; returns the model."""
    for name in list(names):
        set_submodule(model, name, factory(name, model.get_submodule(name)))
    return model


def replace_activations(model: nn.Module, old: tuple[type[nn.Module], ...],
                        make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Swap every activation module of a type in ``old`` (e.g. ReLU -> Hardtanh), in place."""
    for name, module in list(model.named_modules()):
        if name and isinstance(module, old):
            set_submodule(model, name, make(module))
    return model
