"""A timm-style model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

Every builder takes the data's geometry as keywords (``in_chans``, ``num_classes``,
``img_size``) so one architecture adapts to MNIST, CIFAR and ImageNet. Names not registered
here fall through to timm, so any timm architecture can be binarized.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bnnbench.errors import BnnbenchError, check_knobs

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# create_model records (in_chans, img_size, img_size) here: a method whose parameters depend on
# the feature-map sizes (XNOR-Net++'s factorized scales) reads it
INPUT_SHAPE_ATTR = "bnnbench_input_shape"


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the models bnnbench defines (any timm model name also works in create_model)."""
    return sorted(_MODELS)


def create_model(name: str, *, in_chans: int, num_classes: int, img_size: int,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model, or any timm model by name, for the given data geometry."""
    if name in _MODELS:
        check_knobs("model", _MODELS[name], kwargs)  # 1.5 layers, "abc" units: one line
        model = _MODELS[name](in_chans=in_chans, num_classes=num_classes, img_size=img_size,
                              **kwargs)
    else:
        from bnnbench.models.from_timm import timm_model  # timm is imported only when needed

        try:
            model = timm_model(name, in_chans=in_chans, num_classes=num_classes,
                               img_size=img_size, **kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise BnnbenchError(f"unknown model {name!r}: use one of "
                                f"{', '.join(list_models())} or a timm model name") from err
    setattr(model, INPUT_SHAPE_ATTR, (in_chans, img_size, img_size))
    return model
