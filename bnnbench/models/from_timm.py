"""Any timm architecture, adapted to the data's geometry (the registry's fallback for a name it
does not define, and the builder of the registered ResNets)."""

from __future__ import annotations

from typing import Any

from torch import nn

SMALL_INPUT = 64  # below this, the ImageNet stem (7x7/2 conv + max-pool) would erase the image


def adapt_small_stem(model: nn.Module, in_chans: int) -> None:
    """CIFAR-style stem for small images: 3x3 stride-1 first conv, no max-pool (He et al. 2016)."""
    conv1 = model.conv1
    model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def timm_model(name: str, *, in_chans: int, num_classes: int, img_size: int,
               **kwargs: Any) -> nn.Module:
    """A timm model with its input channels and classes set; small-input stem for ResNets."""
    import timm

    model = timm.create_model(name, pretrained=False, in_chans=in_chans,
                              num_classes=num_classes, **kwargs)
    if img_size < SMALL_INPUT and hasattr(model, "conv1") and hasattr(model, "maxpool"):
        adapt_small_stem(model, in_chans)
    return model
