"""ResNets from timm (:func:`bnnbench.models.from_timm.timm_model`), registered by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from bnnbench.models.from_timm import timm_model
from bnnbench.models.registry import register_model


@register_model
def resnet18(*, in_chans: int, num_classes: int, img_size: int, **kwargs: Any) -> nn.Module:
    """ResNet-18 (He et al. 2016) from timm: 11,689,512 parameters at 3 x 224 x 224, 1000 classes."""
    return timm_model("resnet18", in_chans=in_chans, num_classes=num_classes, img_size=img_size,
                      **kwargs)


@register_model
def resnet34(*, in_chans: int, num_classes: int, img_size: int, **kwargs: Any) -> nn.Module:
    """ResNet-34 (He et al. 2016) from timm."""
    return timm_model("resnet34", in_chans=in_chans, num_classes=num_classes, img_size=img_size,
                      **kwargs)
