"""BatchNorm -> sign folded into the packed kernels (bnnbench.packed.fusion): the thresholds are
exact for every dot a layer can produce (ties, gamma < 0, gamma == 0), the fused packed model
hands packed bits from layer to layer and predicts exactly what the unfused packed path does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnbench.bench import trained_like_batchnorm
from bnnbench.packed.format import load_packed, save_packed
from bnnbench.packed.fusion import find_sign_chains, sign_thresholds
from bnnbench.spec import build_net, spec_from_config

pytest.importorskip("bnnbench.kernels")

K_FANIN = 12


def _bn(cls, gamma, beta, mean, var, eps=0.0):
    bn = cls(len(gamma), eps=eps).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    return bn


# channel: (gamma, beta, mean, var) -> the (threshold, flip) real arithmetic gives, K = 12
DESIGNED = [
    ((1.0, 0.0, 3.0, 1.0), (3, 0)),      # BN(3) = 0 exactly: sign(0) = +1, so bit 1 iff d < 3
    ((-1.0, 0.0, 3.0, 1.0), (4, 1)),     # BN(3) = -0.0: still +1; bit 1 iff d >= 4
    ((0.0, 0.5, 3.0, 1.0), (13, 1)),     # gamma 0, beta > 0: never -1
    ((0.0, 0.0, 3.0, 1.0), (13, 1)),     # gamma 0, beta 0: BN = +-0, never -1
    ((0.0, -0.5, 3.0, 1.0), (13, 0)),    # gamma 0, beta < 0: always -1
    ((2.0, 1.0, -2.5, 4.0), (-3, 0)),    # 2 (d + 2.5) / 2 + 1 >= 0 iff d >= -3.5
    ((0.5, -100.0, 0.0, 1.0), (13, 0)),  # threshold past K: always -1
    ((-0.5, 0.25, 0.0, 1.0), (1, 1)),    # -(d / 2) + 1/4 < 0 iff d > 0.5
]


def _brute(modules, k, channels, dtype, conv):
    d = torch.arange(-k, k + 1)
    y = d.to(dtype)[:, None].expand(-1, channels).contiguous()
    if conv:
        y = y[:, :, None, None]
    with torch.no_grad():
        for m in modules:
            y = m(y)
    return d, (y.reshape(len(d), channels) < 0)


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_designed_channels_fold_to_the_exact_rules(conv, dtype):
    cls = nn.BatchNorm2d if conv else nn.BatchNorm1d
    params = list(zip(*[c for c, _ in DESIGNED]))
    modules = [_bn(cls, *params).to(dtype), nn.Hardtanh()]
    t, f = sign_thresholds(modules, K_FANIN, len(DESIGNED), dtype, "cpu", conv)
    assert t.dtype == f.dtype == torch.int32
    assert [(int(a), int(b)) for a, b in zip(t, f)] == [want for _, want in DESIGNED]
    d, neg = _brute(modules, K_FANIN, len(DESIGNED), dtype, conv)
    assert torch.equal((d[:, None] < t) ^ f.bool(), neg)


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_random_batchnorms_fold_exactly_in_any_chunking(chunk, monkeypatch):
    """Random statistics and affine terms (a third of the gammas negative, some zero), K odd,
    the values evaluated in chunks smaller than K: every decision equals the float path's."""
    import bnnbench.packed.fusion as fusion

    monkeypatch.setattr(fusion, "_CHUNK_ELEMENTS", chunk * 50)
    g = torch.Generator().manual_seed(0)
    c, k = 50, 77
    gamma = torch.randn(c, generator=g)
    gamma[::7] = 0.0
    beta, mean = torch.randn(c, generator=g) * 3, torch.randn(c, generator=g) * 10
    var = torch.rand(c, generator=g) * 40
    bn = _bn(nn.BatchNorm1d, gamma.tolist(), beta.tolist(), mean.tolist(), var.tolist(),
             eps=1e-5)
    t, f = sign_thresholds([bn, nn.Hardtanh()], k, c, torch.float32, "cpu", False)
    d, neg = _brute([bn], k, c, torch.float32, False)
    assert torch.equal((d[:, None] < t) ^ f.bool(), neg)
    moving = (t > -k) & (t <= k)  # channels whose sign changes within [-K, K]
    assert bool(f[(gamma < 0) & moving].all()) and not bool(f[(gamma > 0) & moving].any())
    assert not bool(moving[gamma == 0].any())


def test_non_monotone_decisions_do_not_fold():
    class Bump(nn.Module):
        def forward(self, y):
            return (y - 2) * (y + 2)  # negative only for |d| < 2

    assert sign_thresholds([Bump()], 5, 3, torch.float32, "cpu", False) is None


def _set_affine(net: nn.Module, seed: int) -> nn.Module:
    """Trained-like BatchNorms whose gammas include negative and zero channels."""
    g = torch.Generator().manual_seed(seed)
    trained_like_batchnorm(net, seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.weight[::5] = 0.0
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return net.eval()


def _export(make_cfg, tmp_path, overrides, geometry):
    spec = spec_from_config(make_cfg(["+method=bnn", *overrides]))
    torch.manual_seed(0)
    net = _set_affine(build_net(spec, geometry), seed=1)
    return net, save_packed(net, tmp_path / "net.safetensors", spec, geometry)


MLP_GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 8}


def test_mlp_fused_equals_unfused(make_cfg, tmp_path):
    """BinaryNet MLP, binary last layer too: hidden 2 -> hidden 3 -> output fuse (the middle
    layer reads and writes packed bits); the logits equal the unfused packed path's and the
    trained network's, bit for bit."""
    net, path = _export(make_cfg, tmp_path, ["model=mlp", "model.hidden_features=67",
                                             "method.fp_last=false"], MLP_GEOMETRY)
    fused, plain = load_packed(path), load_packed(path, fuse=False)
    assert [(c.producer, c.between, c.consumer) for c in fused.sign_chains] == [
        ("6", ["7", "8", "9"], "10"), ("10", ["11", "12", "13"], "14")]
    assert plain.sign_chains == []
    x = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        seen = []
        hook = fused[10].register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
        out = fused(x)
        hook.remove()
        assert seen == [(torch.int32, torch.int32)]  # packed in, packed out
        assert torch.equal(out, plain(x)) and torch.equal(out, net(x))


def test_training_mode_runs_unfused(make_cfg, tmp_path):
    _, path = _export(make_cfg, tmp_path, ["model=mlp", "model.hidden_features=40"],
                      MLP_GEOMETRY)
    fused = load_packed(path)
    assert len(fused.sign_chains) == 1
    x = torch.randn(4, 40)
    assert fused[6](x).dtype == torch.int32
    fused[7].train()  # the BatchNorm between the pair (batch statistics now): no fold
    out = fused[6](x)
    assert out.dtype == torch.float32 and out.shape == (4, 40)


@pytest.mark.slow
def test_resnet18_blocks_fused_equals_unfused(make_cfg, tmp_path):
    """ResNet-18 (timm BasicBlocks): conv1 -> bn1 -> act1 -> conv2 of every block fuses (the
    residual adds and the downsample shortcuts do not), same logits as the unfused path."""
    net, path = _export(make_cfg, tmp_path, ["model=resnet18"],
                        {"in_chans": 1, "num_classes": 10, "img_size": 28})
    fused, plain = load_packed(path), load_packed(path, fuse=False)
    assert sorted(c.producer for c in fused.sign_chains) == [
        f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    assert all(c.consumer == c.producer[:-1] + "2" for c in fused.sign_chains)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = fused(x)
        assert torch.equal(out, plain(x)) and torch.equal(out, net(x))


def test_only_exactly_foldable_compositions_are_found():
    """A residual use of the BN output, a scale layer or a pooling in between, a biased
    producer: no chain."""
    from bnnbench.nn.layers import QuantLinear
    from bnnbench.nn.quantizers import SignQuantizer
    from bnnbench.packed.encoding import PackedWeight, encode_weight
    from bnnbench.packed.routes import use_kernels

    def binary(n_in, n_out, bias=False):
        layer = QuantLinear(n_in, n_out, bias=bias, weight_quantizer=SignQuantizer(),
                            input_quantizer=SignQuantizer())
        meta, parts = encode_weight(layer.quantized_weight().detach(), 1)
        layer.weight_quantizer = PackedWeight(meta, parts, layer.weight_quantizer)
        return layer

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = binary(8, 8), nn.BatchNorm1d(8), binary(8, 8)

        def forward(self, x):
            y = self.bn(self.a(x))
            return self.b(y) + y  # the BN output has a second user

    plain = nn.Sequential(binary(8, 8), nn.BatchNorm1d(8), nn.Hardtanh(), binary(8, 8))
    biased = nn.Sequential(binary(8, 8, bias=True), nn.BatchNorm1d(8), binary(8, 8))
    scaled = nn.Sequential(binary(8, 8), nn.BatchNorm1d(8), nn.Softsign(), binary(8, 8))
    for net, want in ((plain, 1), (biased, 0), (scaled, 0), (Residual(), 0)):
        net.eval()
        use_kernels(net)
        assert len(find_sign_chains(net)) == want, net
