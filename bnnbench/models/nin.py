"""Network in Network for ImageNet (Lin, Chen, Yan 2014), the Caffe model-zoo layout, and Tang et
al.'s expanded NIN (Tang, Hua, Wang, AAAI 2017, Sec. "Expanding the network").

Caffe ImageNet NIN (``nin_imagenet``; 7,595,176 conv weights and biases at 1,000 classes)::

    conv1 11x11/4 3->96,     cccp1 1x1 96->96,     cccp2 1x1 96->96,     pool 3/2
    conv2 5x5 p2 96->256,    cccp3 1x1 256->256,   cccp4 1x1 256->256,   pool 3/2
    conv3 3x3 p1 256->384,   cccp5 1x1 384->384,   cccp6 1x1 384->384,   pool 3/2, dropout
    conv4 3x3 p1 384->1024,  cccp7 1x1 1024->1024, cccp8 1x1 1024->classes, global average pool

Expanded NIN (Tang et al.: "the first two cccp layers ... 96 -> 128 channels, the first four
cccp kernels 1x1 -> 3x3"): cccp1 3x3 96->128, cccp2 3x3 128->128, conv2 128->256, cccp3/cccp4
3x3 256->256: 9,088,232 conv weights and biases at 1,000 classes.

Every conv keeps its Caffe bias (so the counts above are Caffe's). ``bn=True`` (default; Tang's
recipe has BatchNorm before every binary layer) puts a BatchNorm after each conv except cccp8;
``bn=False`` is the Caffe net (ReLU only). The classifier cccp8 feeds the global average pool
directly, so the logits are signed.
"""

from __future__ import annotations

from torch import nn

from bnnbench.errors import check_range
from bnnbench.models.registry import register_model
from bnnbench.nn.blocks import ConvBlock

SMALL_INPUT = 64  # below this the 11x11 stride-4 stem would shrink a 32 px image to 6 px

#: (name, in, out, kernel, stride, padding, pool after) of the Caffe ImageNet NIN; cccp8 is last.
NIN_LAYERS: tuple[tuple[str, int, int, int, int, int, bool], ...] = (
    ("conv1", 0, 96, 11, 4, 0, False),
    ("cccp1", 96, 96, 1, 1, 0, False),
    ("cccp2", 96, 96, 1, 1, 0, True),
    ("conv2", 96, 256, 5, 1, 2, False),
    ("cccp3", 256, 256, 1, 1, 0, False),
    ("cccp4", 256, 256, 1, 1, 0, True),
    ("conv3", 256, 384, 3, 1, 1, False),
    ("cccp5", 384, 384, 1, 1, 0, False),
    ("cccp6", 384, 384, 1, 1, 0, True),
    ("conv4", 384, 1024, 3, 1, 1, False),
    ("cccp7", 1024, 1024, 1, 1, 0, False),
)

#: Tang et al.'s expansion: first two cccp layers 96 -> 128 channels, first four cccp kernels 3x3.
EXPANDED = {
    "cccp1": (96, 128, 3, 1, 1),
    "cccp2": (128, 128, 3, 1, 1),
    "conv2": (128, 256, 5, 1, 2),
    "cccp3": (256, 256, 3, 1, 1),
    "cccp4": (256, 256, 3, 1, 1),
}


class NIN(nn.Module):
    """``features``: one :class:`~bnnbench.nn.blocks.ConvBlock` per conv/cccp layer (named as in
    Caffe), a dropout after the third pool, then ``cccp8`` and ``pool`` (global average) + flatten.

    Input sizes: at >= 64 px, the Caffe stem (conv1 11x11 stride 4) is used; 224 and 227 give
    6 x 6 maps before the global pool, as in Caffe. Below 64 px (MNIST 28, CIFAR 32) conv1 becomes
    3x3 stride 1 padding 1 (same 96 filters); everything else is unchanged (the global average
    pool absorbs any remaining size). Pools round up like Caffe's (``ceil_mode=True``).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, img_size: int = 224,
                 expanded: bool = False, bn: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        check_range("model.dropout", dropout, low=0, high=1)
        check_range("img_size", img_size, low=8)
        blocks: dict[str, nn.Module] = {}
        for name, c_in, c_out, k, s, p, pool in NIN_LAYERS:
            if expanded and name in EXPANDED:
                c_in, c_out, k, s, p = EXPANDED[name]
            if name == "conv1":
                c_in = in_chans
                if img_size < SMALL_INPUT:
                    k, s, p = 3, 1, 1
            blocks[name] = ConvBlock(
                nn.Conv2d(c_in, c_out, k, stride=s, padding=p),
                nn.BatchNorm2d(c_out) if bn else None, nn.ReLU(),
                nn.MaxPool2d(3, 2, ceil_mode=True) if pool else None)
            if name == "cccp6":
                blocks["drop3"] = nn.Dropout(dropout)
        blocks["cccp8"] = ConvBlock(nn.Conv2d(1024, num_classes, 1),
                                    pool=nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential()
        for name, module in blocks.items():
            self.features.add_module(name, module)
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(self.features(x))


@register_model
def nin(*, in_chans: int, num_classes: int, img_size: int, bn: bool = True,
        dropout: float = 0.5) -> nn.Module:
    """Caffe ImageNet NIN: 7,595,176 conv weights and biases at 1,000 classes."""
    return NIN(in_chans, num_classes, img_size, expanded=False, bn=bn, dropout=dropout)


@register_model
def nin_expanded(*, in_chans: int, num_classes: int, img_size: int, bn: bool = True,
                 dropout: float = 0.5) -> nn.Module:
    """Tang et al.'s expanded NIN: 9,088,232 conv weights and biases at 1,000 classes."""
    return NIN(in_chans, num_classes, img_size, expanded=True, bn=bn, dropout=dropout)
