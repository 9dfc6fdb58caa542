"""ReActNet-A (``model=reactnet_a``, issue 13): the paper network's parameter count and layout,
what each binary conv of a block multiplies in train and eval mode (against the authors' form:
two 1x1 convs concatenated), every method on it, a short fit and the packed export.

References are written from the paper and the authors' code (liuzechun/ReActNet,
mobilenet/2_step2/reactnet.py), never by calling the block's own pieces.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.bench import trained_like_batchnorm
from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method, list_methods
from bnnbench.models import create_model
from bnnbench.nn.layers import is_quantized, quantized_layers
from bnnbench.nn.modern_layers import PreNormUnit, ReActNetABlock, RPReLU
from bnnbench.train import run
from tests.conftest import FAST
from tests.test_methods_new import bn_ref, ref_rprelu, ref_sign

# The authors' stage_out_channel: the stem, then the 13 blocks' output channels.
AUTHORS_CHANNELS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def authors_parameter_count(num_classes: int, in_chans: int = 3) -> int:
    """Every parameter of the authors' binary ReActNet-A, from its definition: stem conv 3x3
    (no bias) + BN; per block C -> D: move11, binary 3x3 C -> C, bn1, move12, prelu1, move13,
    move21 (5C besides the conv and bn1), the 1x1 conv(s) C -> D and their BN (2D), move22,
    prelu2, move23 (3D); fc with bias."""
    stem = AUTHORS_CHANNELS[0]
    total = in_chans * stem * 9 + 2 * stem
    for c, d in zip(AUTHORS_CHANNELS[:-1], AUTHORS_CHANNELS[1:]):
        total += 9 * c * c + 2 * c + 5 * c + c * d + 2 * d + 3 * d
    return total + AUTHORS_CHANNELS[-1] * num_classes + num_classes


def test_full_imagenet_reactnet_a_has_the_authors_parameter_count():
    """29,343,592 parameters: the count above, and the authors' reactnet() counted (the sum of
    p.numel() of mobilenet/2_step2/reactnet.py at commit a6cd08d, 1000 classes)."""
    assert authors_parameter_count(1000) == 29_343_592
    host = create_model("reactnet_a", in_chans=3, num_classes=1000, img_size=224)
    # the host has no RSign/RPReLU parameters: 5C + 3D fewer per block
    shifts = sum(5 * c + 3 * d for c, d in zip(AUTHORS_CHANNELS[:-1], AUTHORS_CHANNELS[1:]))
    assert sum(p.numel() for p in host.parameters()) == 29_343_592 - shifts == 29_300_936
    net = create_method("reactnet").convert(host)
    assert sum(p.numel() for p in net.parameters()) == 29_343_592
    blocks = [m for m in net.modules() if isinstance(m, ReActNetABlock)]
    assert [b.pointwise.out_channels for b in blocks] == AUTHORS_CHANNELS[1:]
    # stride 2 where the channels grow, except into 64 (as MobileNet-V1)
    assert [b.conv.stride[0] for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    binary = [name for name, layer in quantized_layers(net) if layer.weight_bits == 1]
    assert len(binary) == 26 and not any(n.startswith(("stem", "fc")) for n in binary)


@pytest.mark.parametrize("size, side", [(224, 7), (64, 2), (28, 2), (32, 2)])
def test_feature_map_at_the_pool(size, side):
    """Stem stride 2 from 64 px (224 -> 7 x 7, as the paper), stride 1 below (MNIST 28 -> 2)."""
    net = create_model("reactnet_a", in_chans=3, num_classes=10, img_size=size,
                       width_multiplier=0.125).eval()
    seen = []
    net.global_pool.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    with torch.no_grad():
        assert net(torch.randn(1, 3, size, size)).shape == (1, 10)
    assert seen[0][-2:] == (side, side) and seen[0][1] == 1024 // 8


@pytest.mark.parametrize("width, message", [(0.01, "model.width_multiplier >= 0.03125"),
                                            (0.0, "model.width_multiplier"),
                                            ("wide", "model.width_multiplier")])
def test_bad_width_is_one_line(width, message):
    with pytest.raises(BnnbenchError, match=message.replace(".", r"\.")) as info:
        create_model("reactnet_a", in_chans=1, num_classes=10, img_size=28,
                     width_multiplier=width)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ composition
def authors_block(block: ReActNetABlock, x: Tensor, train: bool, react: bool) -> Tensor:
    """The authors' BasicBlock.forward written out: move11 -> sign -> binary 3x3 -> bn1,
    + AvgPool2d(2)(x) at stride 2, move12 -> prelu1 -> move13 (RPReLU), move21 -> sign; then
    binary_pw -> bn2 + out1 (C -> C), or binary_pw_down1/2 -> bn2_1/2 each + out1, concatenated
    (C -> 2C). The two 1x1 convs are the halves of ``pointwise``; the two BNs the halves of
    ``bn2``. Binary weights alpha_o sign(W), alpha_o = mean |W_o|."""
    def binary_weight(w: Tensor) -> Tensor:
        w = w.detach()
        return w.abs().mean((1, 2, 3), keepdim=True) * ref_sign(w)

    def shifted(x: Tensor, shift: nn.Module) -> Tensor:
        return x + shift.shift.detach().view(1, -1, 1, 1) if react else x

    conv, c = block.conv, block.conv.in_channels
    out1 = bn_ref(block.bn1, F.conv2d(ref_sign(shifted(x, block.shift1)),
                                      binary_weight(conv.weight), stride=conv.stride,
                                      padding=1), train)
    if conv.stride[0] == 2:  # the authors' AvgPool2d(2, 2) on an even map
        n, _, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))
    out1 = out1 + x
    out1 = ref_rprelu(block.act1, out1) if react else out1
    signs = ref_sign(shifted(out1, block.shift2))
    w_pw = block.pointwise.weight
    halves = []
    for k in range(block.pointwise.out_channels // c):
        rows = slice(k * c, (k + 1) * c)
        bn = SimpleNamespace(  # bn2_1 / bn2_2: this half's channels of bn2
            eps=block.bn2.eps, weight=block.bn2.weight[rows].detach(),
            bias=block.bn2.bias[rows].detach(), running_mean=block.bn2.running_mean[rows],
            running_var=block.bn2.running_var[rows])
        halves.append(bn_ref(bn, F.conv2d(signs, binary_weight(w_pw[rows])), train) + out1)
    out2 = torch.cat(halves, dim=1)
    return ref_rprelu(block.act2, out2) if react else out2


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("method", ["reactnet", "bireal"])
def test_block_multiplies_signs_and_matches_the_authors_block(method, train):
    """A stride-1 C -> C block and a stride-2 C -> 2C block, learned shifts and RPReLU moved off
    their init, BatchNorm with trained statistics: equal to the authors' block in both modes."""
    torch.manual_seed(0)
    net = create_method(method).convert(
        create_model("reactnet_a", in_chans=1, num_classes=10, img_size=28,
                     width_multiplier=0.125))
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    trained_like_batchnorm(net, seed=1)
    blocks = [m for m in net.modules() if isinstance(m, ReActNetABlock)]
    react = method == "reactnet"
    assert all(isinstance(b.act2, RPReLU if react else nn.Identity) for b in blocks)
    for block in (blocks[2], blocks[3]):  # 16 -> 16 at stride 1; 16 -> 32 at stride 2
        if react:
            with torch.no_grad():
                for part in (block.shift1, block.act1, block.shift2, block.act2):
                    for p in part.parameters():
                        p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(4, block.conv.in_channels, 8, 8)
        block.train(train)
        with torch.no_grad():
            got = block(x)
        torch.testing.assert_close(got, authors_block(block, x, train, react),
                                   rtol=1e-4, atol=1e-4)


def test_rsign_shift_reaches_what_both_convs_multiply():
    """ReActNet's 3x3 conv multiplies sign(x + b1), its 1x1 conv sign(y1 + b2); both
    thresholds get a gradient."""
    torch.manual_seed(0)
    net = create_method("reactnet").convert(
        create_model("reactnet_a", in_chans=1, num_classes=10, img_size=28,
                     width_multiplier=0.125))
    block = [m for m in net.modules() if isinstance(m, ReActNetABlock)][3]
    seen = {}
    for name in ("conv", "pointwise"):
        quantizer = getattr(block, name).input_quantizer
        quantizer.register_forward_hook(lambda _m, _i, out, n=name: seen.__setitem__(n, out))
    block(torch.randn(2, block.conv.in_channels, 8, 8)).sum().backward()
    assert all(set(t.unique().tolist()) <= {-1.0, 1.0} for t in seen.values())
    for shift in (block.shift1, block.shift2):
        assert shift.shift.grad is not None and shift.shift.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ methods
@pytest.mark.parametrize("method", list_methods())
def test_every_method_binarizes_the_26_block_convs(method):
    """Every method runs on ReActNet-A: the 26 block convs quantized, the stem conv and the fc
    as the method's first/last-layer rule says, the real shortcuts kept."""
    recipe = create_method(method)
    net = recipe.convert(create_model("reactnet_a", in_chans=1, num_classes=10, img_size=16,
                                      width_multiplier=0.0625))
    quantized = [name for name, layer in quantized_layers(net) if is_quantized(layer)]
    if method == "fp":
        assert quantized == []
        return
    ends = {"stem": not recipe.fp_first, "fc": not recipe.fp_last}
    assert len(quantized) == 26 + sum(ends.values())
    assert {end: any(n.startswith(end) for n in quantized) for end in ends} == ends
    if method == "xnorpp":  # each block as the strong baseline's two units, shortcuts kept
        units = [m for m in net.modules() if isinstance(m, PreNormUnit)]
        assert len(units) == 26 and all(u.shortcut is not None for u in units)
    else:
        assert sum(isinstance(m, ReActNetABlock) for m in net.modules()) == 13
    x = torch.randn(2, 1, 16, 16)
    net(x).sum().backward()


# ------------------------------------------------------------------------------ fit, export
@pytest.mark.parametrize("method", ["reactnet", "bireal"])
def test_one_step_fit_through_the_cli_config(make_cfg, method):
    """The shipped YAML (+method=<m> model=reactnet_a) at width 1/16 trains one step end to
    end and records its numbers."""
    record = run(make_cfg([f"+method={method}", "model=reactnet_a",
                           "model.width_multiplier=0.0625", *FAST,
                           "+trainer.max_steps=1"]))
    assert record.status == "finished" and 0 <= record.test_top1 <= 100
    assert record.num_params > 0


def test_a_few_steps_on_one_batch_lower_the_loss():
    """Adam on one batch of 32 at width 1/8: the binary network fits it (loss falls)."""
    torch.manual_seed(0)
    method = create_method("reactnet")
    net = method.convert(create_model("reactnet_a", in_chans=1, num_classes=10, img_size=28,
                                      width_multiplier=0.125)).train()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    optimizer = torch.optim.Adam(method.param_groups(net), lr=5e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = method.loss(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("method", ["reactnet", "bireal", "xnorpp"])
def test_packed_export_runs_every_block_conv_on_the_kernels(method, tmp_path):
    """The exported ReActNet-A: each of the 26 binary convs on the packed XNOR-popcount path
    (sign x sign), predictions equal to the trained network's."""
    pytest.importorskip("bnnbench.kernels")
    from bnnbench.packed.format import load_packed, save_packed
    from bnnbench.packed.routes import kernel_route
    from bnnbench.spec import build_net

    spec = {"model": {"name": "reactnet_a", "kwargs": {"width_multiplier": 0.0625}},
            "method": {"name": method, "knobs": {}},
            "data": {"name": "synthetic", "args": {}}}
    geometry = {"in_chans": 1, "num_classes": 10, "img_size": 8}
    torch.manual_seed(0)
    net = trained_like_batchnorm(build_net(spec, geometry), seed=1).eval()
    fast = load_packed(save_packed(net, tmp_path / "net.safetensors", spec, geometry))
    routes = [r for _, m in fast.named_modules() if (r := kernel_route(m))]
    assert routes == ["own"] * 26
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = net(x), fast(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1))
