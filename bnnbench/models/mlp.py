"""BinaryNet's MNIST multilayer perceptron (Courbariaux et al. 2016, Sec. 2.6 and code)."""

from __future__ import annotations

from torch import nn

from bnnbench.errors import check_range
from bnnbench.models.registry import register_model


class MLP(nn.Sequential):
    """Flatten -> Dropout(p_in) -> depth x [Linear -> BN -> ReLU -> Dropout(p_hidden)] -> Linear -> BN.

    The paper's MNIST network is 3 x 4096 hidden units, dropout 0.2 on the input and 0.5 on the
    hidden layers, BatchNorm after every layer including the output (the authors' Theano code).
    ReLU is the full-precision activation; binary methods swap it for their own (BinaryNet: htanh).
    """

    def __init__(self, in_features: int, num_classes: int, hidden_features: int = 4096,
                 depth: int = 3, dropout_in: float = 0.2, dropout_hidden: float = 0.5,
                 output_bn: bool = True) -> None:
        check_range("model.hidden_features", hidden_features, low=1, integer=True)
        check_range("model.depth", depth, low=0, integer=True)
        check_range("model.dropout_in", dropout_in, low=0, high=1)
        check_range("model.dropout_hidden", dropout_hidden, low=0, high=1)
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(dropout_in)]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_features, bias=False),
                       nn.BatchNorm1d(hidden_features), nn.ReLU(), nn.Dropout(dropout_hidden)]
            width = hidden_features
        layers.append(nn.Linear(width, num_classes, bias=not output_bn))
        if output_bn:
            layers.append(nn.BatchNorm1d(num_classes))
        super().__init__(*layers)


@register_model
def mlp(*, in_chans: int, num_classes: int, img_size: int, hidden_features: int = 4096,
        depth: int = 3, dropout_in: float = 0.2, dropout_hidden: float = 0.5,
        output_bn: bool = True) -> nn.Module:
    """BinaryNet's MLP for inputs of ``in_chans x img_size x img_size``."""
    return MLP(in_chans * img_size * img_size, num_classes, hidden_features, depth, dropout_in,
               dropout_hidden, output_bn)
