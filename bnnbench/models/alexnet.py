"""AlexNet in the Caffe ``bvlc_alexnet`` layout (Krizhevsky et al. 2012; Jia et al. 2014).

The layout the BNN papers' AlexNet numbers refer to (Tang et al. 2017 Table 1: 232 MB = 60,965,224
float32 parameters): conv2, conv4 and conv5 are grouped convs with ``groups=2`` (the two-GPU split
of the original paper), and pools are 3x3 stride 2 with Caffe's ceil rounding.

    conv1 11x11/4  3->96        relu, norm, pool 3/2
    conv2  5x5 p2 96->256  g2   relu, norm, pool 3/2
    conv3  3x3 p1 256->384      relu
    conv4  3x3 p1 384->384 g2   relu
    conv5  3x3 p1 384->256 g2   relu, pool 3/2          (6 x 6 maps at 224 or 227 input)
    fc6 9216->4096 relu dropout, fc7 4096->4096 relu dropout, fc8 4096->classes

``norm='lrn'`` is Caffe's net (LocalResponseNorm after conv1/conv2, no BatchNorm).
``norm='bn'`` (default) is what binary papers train (XNOR-Net, DoReFa, Tang): BatchNorm after every
conv and after fc6/fc7, no LRN. Both keep Caffe's conv/FC biases, so the conv+FC weight-and-bias
count is 60,965,224 at 1,000 classes in both; the ``bn`` variant adds BatchNorm's own parameters.
"""

from __future__ import annotations

from torch import nn

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.models.registry import register_model
from bnnbench.nn.blocks import ConvBlock

NORMS = ("bn", "lrn")
SMALL_INPUT = 64  # below this the 11x11 stride-4 stem would shrink a 32 px image to 6 px
FEATURE_MAP = 6   # conv5 -> pool5 gives 6 x 6 at 224 and 227 (Caffe ceil-mode pooling)

#: Caffe's order in the LRN net: conv -> relu -> norm -> pool (the norm sits in the block's bn slot).
LRN_ORDER = ("conv", "act", "bn", "pool")
BN_ORDER = ("conv", "bn", "act", "pool")


def caffe_pool() -> nn.MaxPool2d:
    """Caffe's 3x3 stride-2 max-pool, which rounds the output size up."""
    return nn.MaxPool2d(3, 2, ceil_mode=True)


class AlexNet(nn.Module):
    """``features`` (five :class:`~bnnbench.nn.blocks.ConvBlock`), ``pool``, ``classifier``.

    Input sizes: at >= 64 px the Caffe stem (11x11 stride 4, no padding) is used; 224 and 227 both
    give 6 x 6 conv5 maps. Below 64 px (MNIST 28, CIFAR 32) conv1 becomes 3x3 stride 1 padding 1
    (same 96 filters) and the rest is unchanged. An adaptive average pool before fc6 brings any
    conv5 map to 6 x 6 (the identity at 224/227), so fc6 keeps its 9216 inputs and the parameter
    count of the classifier is the paper's at every resolution.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, img_size: int = 227,
                 norm: str = "bn", dropout: float = 0.5, fc_features: int = 4096) -> None:
        super().__init__()
        if norm not in NORMS:
            raise BnnbenchError(f"model.norm={norm!r} is not valid; choose one of: "
                                f"{', '.join(NORMS)}")
        check_range("model.dropout", dropout, low=0, high=1)
        check_range("img_size", img_size, low=8)
        check_range("model.fc_features", fc_features, low=1)
        bn = norm == "bn"
        order = BN_ORDER if bn else LRN_ORDER

        def block(conv: nn.Conv2d, lrn: bool = False, pool: bool = False) -> ConvBlock:
            if bn:
                norm_layer: nn.Module | None = nn.BatchNorm2d(conv.out_channels)
            else:
                norm_layer = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if lrn else None
            return ConvBlock(conv, norm_layer, nn.ReLU(), caffe_pool() if pool else None,
                             order=order)

        if img_size >= SMALL_INPUT:
            conv1 = nn.Conv2d(in_chans, 96, 11, stride=4)
        else:
            conv1 = nn.Conv2d(in_chans, 96, 3, stride=1, padding=1)
        self.features = nn.Sequential(
            block(conv1, lrn=True, pool=True),
            block(nn.Conv2d(96, 256, 5, padding=2, groups=2), lrn=True, pool=True),
            block(nn.Conv2d(256, 384, 3, padding=1)),
            block(nn.Conv2d(384, 384, 3, padding=1, groups=2)),
            block(nn.Conv2d(384, 256, 3, padding=1, groups=2), pool=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(FEATURE_MAP)
        self.flatten = nn.Flatten()
        hidden: list[nn.Module] = []
        width_in = 256 * FEATURE_MAP * FEATURE_MAP
        for _ in range(2):  # fc6, fc7
            hidden += [nn.Linear(width_in, fc_features)]
            if bn:
                hidden.append(nn.BatchNorm1d(fc_features))
            hidden += [nn.ReLU(), nn.Dropout(dropout)]
            width_in = fc_features
        self.classifier = nn.Sequential(*hidden, nn.Linear(fc_features, num_classes))  # fc8

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model
def alexnet(*, in_chans: int, num_classes: int, img_size: int, norm: str = "bn",
            dropout: float = 0.5, fc_features: int = 4096) -> nn.Module:
    """Caffe ``bvlc_alexnet`` (grouped conv2/4/5): 60,965,224 conv+FC weights and biases at
    3 x 227 (or 224) input and 1,000 classes; ``norm='lrn'`` is Caffe's net exactly (same total).
    ``fc_features`` is the width of fc6/fc7 (4096 in the paper; smaller only for quick tests).
    """
    return AlexNet(in_chans, num_classes, img_size, norm, dropout, fc_features)
