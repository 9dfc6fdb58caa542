"""ReActNet-A's network (Liu, Shen, Savvides, Cheng, ECCV 2020, Sec. 3.1 and Fig. 3), full precision.

MobileNet-V1's 13 depthwise-separable blocks with each 3x3 depthwise conv made a full 3x3 conv
and a real-valued shortcut around every conv (:class:`~bnnbench.nn.modern_layers.
ReActNetABlock`). Authors' code: github.com/liuzechun/ReActNet, ``mobilenet/2_step2/
reactnet.py`` (``stage_out_channel``, ``firstconv3x3``, ``BasicBlock``, ``reactnet``).
"""

from __future__ import annotations

from torch import Tensor, nn

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.models.registry import register_model
from bnnbench.models.from_timm import SMALL_INPUT
from bnnbench.nn.modern_layers import ReActNetABlock

#: the authors' ``stage_out_channel`` in units of the stem's width (32 at width 1): the stem,
#: then the output channels of the 13 blocks
STAGE_WIDTHS = (1, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32)
STEM_WIDTH = 32


class ReActNetA(nn.Module):
    """stem (3x3 conv, BN, ReLU) -> 13 ReActNet-A blocks -> global average pool -> fc.

    Channels ``32 w x (1, 2, 4, 4, 8, 8, 16 x 6, 32 x 2)`` (``w`` = ``width_multiplier``): a block
    whose output has twice its input's channels doubles them by concatenation, at stride 2 except
    the first (32 -> 64 at stride 1, as MobileNet-V1 and the authors' code). The stem has stride
    2 at >= 64 px (the paper's 224: maps 112, 56, 28, 14, 7) and stride 1 below (MNIST 28: 28,
    14, 7, 4, 2), as the ResNets' small-input stem. The authors' stem is conv -> BN with no
    activation: the stem's ReLU here is the host's, which Bi-Real Net and ReActNet remove with
    every other ReLU.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, img_size: int = 224,
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        check_range("model.width_multiplier", width_multiplier, low=0, low_inclusive=False)
        base = round(STEM_WIDTH * width_multiplier)
        if base < 1:
            raise BnnbenchError(f"model.width_multiplier={width_multiplier} leaves the stem no "
                                f"channel: use model.width_multiplier >= {1 / STEM_WIDTH:g} (one stem channel)")
        widths = [base * k for k in STAGE_WIDTHS]
        stride = 2 if img_size >= SMALL_INPUT else 1
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            # the authors' rule: stride 2 where the channels grow, except into 64 (block 1)
            down = c_out != c_in and c_out != STAGE_WIDTHS[1] * base
            blocks.append(ReActNetABlock(c_in, c_out, 2 if down else 1))
        self.blocks = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.global_pool(self.blocks(self.stem(x)))))


@register_model
def reactnet_a(*, in_chans: int, num_classes: int, img_size: int,
               width_multiplier: float = 1.0) -> nn.Module:
    """ReActNet-A's network (Liu et al. 2020), full precision: 29,343,592 parameters at 1000
    classes once ``+method=reactnet`` adds its RSign/RPReLU parameters (the authors' network,
    counted), 29,300,936 as the full-precision host; ``width_multiplier`` scales every width."""
    return ReActNetA(in_chans, num_classes, img_size, width_multiplier)
