"""Tests that kill surviving mutants of the newer methods (``--scope modern`` of
``python -m bnnbench.devtools.mutation``; see reports/mutation_modern.md).

Each asserts against an independent reference: a closed form or a value computed by hand here,
never the implementation's own pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnbench.methods.bireal import pooled_downsample


def test_pooled_downsample_is_avgpool_then_the_same_1x1_conv():
    """The authors' downsample AvgPool2d(2) -> 1x1 conv (stride 1) -> BN, from the host's strided
    1x1 conv: same weights, output = mean over each 2 x 2 window, then W x + b."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1, stride=2, bias=True)
    bn = nn.BatchNorm2d(4).eval()
    new = pooled_downsample(nn.Sequential(conv, bn)).eval()
    assert [type(m).__name__ for m in new] == ["AvgPool2d", "Conv2d", "BatchNorm2d"]
    assert new[1].stride == (1, 1) and new[2] is bn
    x = torch.randn(2, 3, 5, 5)  # odd: ceil mode keeps the strided conv's 3 x 3 output
    padded = F.pad(x, (0, 1, 0, 1))
    counts = F.pad(torch.ones(1, 1, 5, 5), (0, 1, 0, 1))
    means = (padded.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
             / counts.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)))
    w = conv.weight.detach().view(4, 3)
    want = torch.einsum("oc,nchw->nohw", w, means) + conv.bias.detach().view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(new[1](new[0](x)), want)
        assert new(x).shape == nn.Sequential(conv, bn).eval()(x).shape
    # nothing to pool: a stride-1 or a non-1x1 downsample is returned as it is
    same = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert pooled_downsample(same) is same
    wide = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4))
    assert pooled_downsample(wide) is wide
