"""BinaryNet's CIFAR-10 ConvNet, often called VGG-small (Courbariaux et al. 2016, Sec. 2.7).

128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10 with BatchNorm after every
layer, including the output layer, as in the authors' Theano/Lasagne code (``cifar10.py``).
"""

from __future__ import annotations

from torch import nn

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.models.registry import register_model
from bnnbench.nn.blocks import ConvBlock

#: The authors' code pools right after the conv, then BatchNorm, then the activation
#: (Conv2DLayer -> MaxPool2DLayer -> BatchNormLayer -> NonlinearityLayer).
POOLED_ORDER = ("conv", "pool", "bn", "act")
PLAIN_ORDER = ("conv", "bn", "act", "pool")

#: The paper's input is 32 x 32, so the last feature map is 4 x 4 (512 * 4 * 4 = 8192 features).
PAPER_FEATURE_MAP = 4


class VGGSmall(nn.Module):
    """Six 3x3 convs in three stages (each ending in a 2x2 max-pool) and three FC layers.

    ``features`` is a stack of :class:`~bnnbench.nn.blocks.ConvBlock` (so XNOR-style methods can
    reorder them); ``classifier`` is Linear -> BN -> ReLU twice, then Linear -> BN (the output BN
    of the authors' code). Convs and FC layers have no bias: the BatchNorm after each one has it.

    Input sizes: the paper uses 32 x 32 (CIFAR-10). The three pools divide the side by 8; a
    28 x 28 input (MNIST) gives 3 x 3 maps and a 3 * 3 * 512 = 4608-input classifier. Above
    32 px, an adaptive average pool brings the maps to the paper's 4 x 4, so the classifier keeps
    its 8192 inputs at any resolution (an adaptation: the paper never ran this net above 32 px).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 10, img_size: int = 32,
                 widths: tuple[int, int, int] = (128, 256, 512), hidden_features: int = 1024,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for i, width in enumerate(widths):
            check_range(f"model.widths[{i}]", width, low=1, integer=True)
        check_range("model.hidden_features", hidden_features, low=1, integer=True)
        check_range("model.dropout", dropout, low=0, high=1)
        side = img_size // 8
        if side < 1:
            raise BnnbenchError(f"vgg_small needs img_size >= 8 (three 2x2 pools), got {img_size}")
        blocks: list[nn.Module] = []
        width_in = in_chans
        for width in widths:
            for pooled in (False, True):
                blocks.append(ConvBlock(
                    nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                    nn.ReLU(), nn.MaxPool2d(2) if pooled else None,
                    order=POOLED_ORDER if pooled else PLAIN_ORDER))
                width_in = width
        self.features = nn.Sequential(*blocks)
        if side > PAPER_FEATURE_MAP:
            self.pool = nn.AdaptiveAvgPool2d(PAPER_FEATURE_MAP)
            side = PAPER_FEATURE_MAP
        else:
            self.pool = nn.Identity()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width_in = widths[-1] * side * side
        for _ in range(2):
            layers += [nn.Linear(width_in, hidden_features, bias=False),
                       nn.BatchNorm1d(hidden_features), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = hidden_features
        layers += [nn.Linear(width_in, num_classes, bias=False), nn.BatchNorm1d(num_classes)]
        self.classifier = nn.Sequential(*layers)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model
def vgg_small(*, in_chans: int, num_classes: int, img_size: int,
              widths: tuple[int, int, int] = (128, 256, 512), hidden_features: int = 1024,
              dropout: float = 0.0) -> nn.Module:
    """BinaryNet's CIFAR-10 net (128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10).

    14,022,016 conv/FC weights at 3 x 32 x 32 and 10 classes (no biases; BN adds 2 per channel).
    """
    return VGGSmall(in_chans, num_classes, img_size, tuple(widths), hidden_features, dropout)
