"""Fidelity to the papers and the authors' code (issue 10, "Deviations that change results").

Each test checks the *composition*: what a binary layer actually multiplies (recorded where
``torch.nn.functional.linear``/``conv2d`` receive it), in train and eval mode, against a reference
written here from the paper, never by calling the layer's own pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.nn.layers import is_quantized, quantized_layers
from bnnbench.nn.paper_layers import Scale

HIDDEN = 64
P_HIDDEN = 0.5  # the mlp's hidden dropout


def mlp() -> nn.Module:
    return create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=HIDDEN)


@contextmanager
def recorded_products(fn_name: str) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Record ``(input, weight)`` of every call to ``torch.nn.functional.<fn_name>``."""
    calls: list[tuple[Tensor, Tensor]] = []
    original = getattr(F, fn_name)

    def spy(x: Tensor, weight: Tensor, *args, **kwargs) -> Tensor:
        calls.append((x.detach().clone(), weight.detach()))
        return original(x, weight, *args, **kwargs)

    setattr(F, fn_name, spy)
    try:
        yield calls
    finally:
        setattr(F, fn_name, original)


def layer_inputs(layers: list[nn.Module]) -> tuple[list[Tensor], Callable[[], None]]:
    """Capture the real input each layer receives (before its own quantizer)."""
    seen: list[Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
               for layer in layers]
    return seen, lambda: [h.remove() for h in handles]


# --- independent references of each paper's activation quantizer ----------------------------------

def ref_sign(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def ref_residual(x: Tensor, m: int) -> Tensor:
    """Tang Eq. 3, one alpha per sample: r_0 = x; H_i = sign(r_{i-1}), a_i = mean|r_{i-1}|."""
    approx, r = torch.zeros_like(x), x
    for _ in range(m):
        h, a = ref_sign(r), r.abs().flatten(1).mean(1).view(-1, *[1] * (x.dim() - 1))
        approx, r = approx + a * h, r - a * h
    return approx


def ref_abc(x: Tensor, shifts: Tensor, betas: Tensor) -> Tensor:
    """ABC-Net Sec. 3.2: sum_n beta_n (2 * 1{clip(x + v_n, 0, 1) >= 0.5} - 1)."""
    out = torch.zeros_like(x)
    for v, b in zip(shifts.tolist(), betas.tolist()):
        out = out + b * (2 * ((x + v).clamp(0, 1) >= 0.5).float() - 1)
    return out


def reference_quantizer(method: str, layer: nn.Module) -> Callable[[Tensor], Tensor]:
    if method in ("bnn", "xnor"):
        return ref_sign
    if method == "tang":
        return lambda x: ref_residual(x, 2)
    q = layer.input_quantizer
    return lambda x: ref_abc(x, q.shifts.detach(), q.betas.detach())


# --- 1. a dropped unit contributes 0 ------------------------------------------------------------

@pytest.mark.parametrize("method", ["bnn", "xnor", "tang", "abcnet"])
def test_dropout_zeroes_what_the_binary_layer_multiplies(method):
    """BN -> binarize -> Dropout -> next layer (BinaryNet's code, XNOR-Net's PyTorch port)."""
    torch.manual_seed(0)
    net = create_method(method).convert(mlp())
    hidden = [layer for _, layer in quantized_layers(net)
              if is_quantized(layer) and tuple(layer.weight.shape) == (HIDDEN, HIDDEN)]
    assert len(hidden) == 2
    x = torch.randn(256, 1, 28, 28)
    for train in (True, False):
        net.train(train)
        seen, remove = layer_inputs(hidden)
        with recorded_products("linear") as calls:
            net(x)
        remove()
        products = [a for a, w in calls if tuple(w.shape) == (HIDDEN, HIDDEN)]
        assert len(products) == len(seen) == 2
        for layer, real, multiplied in zip(hidden, seen, products):
            quantized = reference_quantizer(method, layer)(real)
            if not train:  # evaluation: no dropout, the layer multiplies q(x) itself
                torch.testing.assert_close(multiplied, quantized)
                continue
            dropped = multiplied == 0
            assert 0.4 < dropped.float().mean().item() < 0.6  # p = 0.5 of the units give 0
            # the kept ones are q(x) / (1 - p) (inverted dropout, as Lasagne's and Torch's)
            torch.testing.assert_close(multiplied[~dropped], quantized[~dropped] / (1 - P_HIDDEN))


@pytest.mark.parametrize("method", ["bnn", "xnor", "tang", "abcnet"])
def test_dropout_before_alexnet_fc7_and_nin_conv4_acts_after_binarization(method):
    torch.manual_seed(0)
    hosts = {
        "alexnet": (create_model("alexnet", in_chans=3, num_classes=10, img_size=32,
                                 fc_features=32), "linear", (32, 32)),
        "nin": (create_model("nin", in_chans=3, num_classes=10, img_size=32), "conv2d",
                (1024, 384, 3, 3)),
        "nin_expanded": (create_model("nin_expanded", in_chans=3, num_classes=10, img_size=32),
                         "conv2d", (1024, 384, 3, 3)),
    }
    x = torch.randn(4, 3, 32, 32)
    for host, (net, fn, shape) in hosts.items():
        net = create_method(method).convert(net)
        for train, low, high in ((True, 0.4, 0.6), (False, 0.0, 0.0)):  # p = 0.5; eval: none
            net.train(train)
            with recorded_products(fn) as calls:
                net(x)
            (multiplied,) = [a for a, w in calls if tuple(w.shape) == shape]
            zeros = (multiplied == 0).float().mean().item()
            assert low <= zeros <= high, f"{host}, train={train}: {zeros:.2f} of inputs are 0"


# --- 2. Tang's scale layer is what reaches the softmax --------------------------------------------

@pytest.mark.parametrize("host", ["mlp", "vgg_small"])
def test_tang_scale_layer_scales_the_logits(host):
    """Tang: last layer binary -> scale -> softmax; a BN in between would cancel the scale."""
    torch.manual_seed(0)
    kw = ({"hidden_features": HIDDEN} if host == "mlp" else
          {"widths": (8, 8, 8), "hidden_features": 16})
    net = create_method("tang").convert(create_model(host, in_chans=1, num_classes=10,
                                                     img_size=28, **kw)).eval()
    (scale,) = [m for m in net.modules() if isinstance(m, Scale)]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        one = net(x)
        scale.scale.mul_(2)
        two = net(x)
    torch.testing.assert_close(two, 2 * one)
    # the Table 3 rows without the scale layer have no output BatchNorm either
    for knobs in ({"fp_last": True}, {"scale_layer": False}):
        plain = create_method("tang", **knobs).convert(create_model(
            host, in_chans=1, num_classes=10, img_size=28, **kw))
        assert not isinstance(list(plain.modules())[-1], nn.modules.batchnorm._BatchNorm)


# --- 3. BinaryNet's first layer keeps its real input ----------------------------------------------

def test_bnn_binary_first_layer_reads_the_real_image():
    torch.manual_seed(0)
    net = create_method("bnn", fp_first=False).convert(mlp()).eval()
    first = net[2]
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    with recorded_products("linear") as calls:
        net(x)
    image, weight = calls[0]
    torch.testing.assert_close(image, x.flatten(1))  # real pixels, not sign(pixels)
    torch.testing.assert_close(weight, ref_sign(first.weight.detach()))
    assert first.input_bits == 32 and first.weight_bits == 1


def test_binarynet_mnist_preset_is_the_papers_setting(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg(["+preset=binarynet_mnist"])
    assert cfg.method._target_.endswith("bnn.BinaryNet")
    assert (cfg.method.fp_first, cfg.method.fp_last) == (False, False)
    assert cfg.method.loss == "squared_hinge" and cfg.method.lr_scale is True
    assert cfg.method.latent_init == "uniform"  # binary_net.py: W = Uniform((-H, H)), H = 1
    assert cfg.model.name == "mlp" and cfg.model.hidden_features == 4096 and cfg.model.depth == 3
    assert (cfg.model.dropout_in, cfg.model.dropout_hidden) == (0.2, 0.5)
    assert cfg.data._target_.endswith("mnist.MNIST") and cfg.data.batch_size == 100
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 3e-3
    assert (cfg.scheduler.lr_end, cfg.scheduler.epochs, cfg.trainer.max_epochs) == (
        3e-7, 1000, 1000)
    method = instantiate(cfg.method)
    net = method.convert(create_model("mlp", in_chans=1, num_classes=10, img_size=28,
                                      hidden_features=32))
    layers = [layer for _, layer in quantized_layers(net)]
    assert [layer.weight_bits for layer in layers] == [1, 1, 1, 1]
    assert [layer.input_bits for layer in layers] == [32, 1, 1, 1]
    assert isinstance(net[-1], nn.BatchNorm1d)  # last layer binary weights with BN
    groups = method.param_groups(net)
    assert sum("lr_scale" in g for g in groups) == 4


def test_binaryconnect_mnist_preset_is_the_papers_setting(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg(["+preset=binaryconnect_mnist"])
    assert cfg.method.loss == "squared_hinge" and cfg.method.stochastic is False
    assert cfg.method.latent_init == "uniform"
    assert (cfg.model.hidden_features, cfg.model.depth) == (1024, 3)
    assert (cfg.model.dropout_in, cfg.model.dropout_hidden) == (0.0, 0.0)
    assert cfg.data.batch_size == 200 and cfg.data.val_size == 10000
    net = instantiate(cfg.method).convert(create_model(
        "mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=32))
    layers = [layer for _, layer in quantized_layers(net)]
    assert [(layer.weight_bits, layer.input_bits) for layer in layers] == [(1, 32)] * 4


def test_dorefa_alexnet_preset_is_the_authors_recipe(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg(["+preset=dorefa_alexnet_w1a2g6"])
    assert (cfg.method.w_bits, cfg.method.a_bits, cfg.method.g_bits) == (1, 2, 6)
    assert cfg.model.name == "alexnet" and cfg.model.dropout == 0.0
    assert (cfg.optimizer.lr, cfg.optimizer.eps, cfg.data.batch_size) == (1e-4, 1e-5, 128)
    opt = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.scheduler)(opt)
    lrs = []
    for _ in range(cfg.trainer.max_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[55] == pytest.approx(1e-4) and lrs[56] == pytest.approx(2e-5)
    assert lrs[63] == pytest.approx(2e-5) and lrs[64] == pytest.approx(4e-6) == lrs[-1]


def test_dorefa_last_layer_reads_clipped_activations():
    """Authors' AlexNet: ... BN -> clip(x, 0, 1) -> FP classifier (a ReLU there is unbounded)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for clip in (True, False):
        net = create_model("alexnet", in_chans=3, num_classes=10, img_size=32, fc_features=32)
        net = create_method("dorefa", clip_before_last=clip).convert(net).eval()  # no dropout
        assert type(net.classifier[-1]) is nn.Linear  # the last layer stays full precision
        for bn in net.modules():  # running var 1e-4: BN outputs of order 100 reach the classifier
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_var.fill_(1e-4)
        seen, remove = layer_inputs([net.classifier[-1]])
        net(x)
        remove()
        assert seen[0].min() >= 0
        assert bool(seen[0].max() <= 1) is clip


# --- 4. XNOR with a ReLU before the sign is rejected -------------------------------------------

def test_xnor_relu_before_sign_is_rejected():
    with pytest.raises(BnnbenchError, match=r"method\.activation") as info:
        create_method("xnor", activation="relu")
    assert "\n" not in str(info.value)


# --- 5. every XNOR/ABC binary layer binarizes a BatchNorm's output ------------------------------

@pytest.mark.parametrize("method", ["xnor", "abcnet"])
@pytest.mark.parametrize("host", ["alexnet", "resnet18"])
def test_every_binary_layer_binarizes_a_batchnorm_output(method, host):
    """Paper block BN -> binarize -> conv/fc: in train mode (BN init gamma = 1, beta = 0) each
    binary layer's real input has per-channel mean 0 and variance 1 over the batch."""
    torch.manual_seed(0)
    kw = {"fc_features": 32} if host == "alexnet" else {}
    net = create_model(host, in_chans=3, num_classes=10, img_size=32, **kw)
    net = create_method(method).convert(net).train()
    for bn in net.modules():  # timm zero-inits bn2, which hides the residual sum at init
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.reset_parameters()
    layers = [layer for _, layer in quantized_layers(net) if is_quantized(layer)]
    seen, remove = layer_inputs(layers)
    net(torch.randn(16, 3, 32, 32))
    remove()
    assert len(seen) == len(layers)
    for layer, x in zip(layers, seen):
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        torch.testing.assert_close(x.mean(dims), torch.zeros(x.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(x.var(dims, unbiased=False), torch.ones(x.shape[1]),
                                   atol=2e-2, rtol=0, msg=lambda m: f"{layer}: {m}")


# --- 5b. ReLUs stay where no sign reads them ---------------------------------------------------

XNOR_BLOCK_HOSTS = {  # every host, small; resnet10t: a timm model with a deep (conv-BN-ReLU) stem
    "mlp": dict(in_chans=1, img_size=28, hidden_features=16),
    "vgg_small": dict(in_chans=3, img_size=16, widths=(8, 16, 32), hidden_features=16),
    "alexnet": dict(in_chans=3, img_size=16, fc_features=16),
    "nin": dict(in_chans=3, img_size=16),
    "resnet18": dict(in_chans=3, img_size=16),
    "resnet34": dict(in_chans=3, img_size=16),
    "resnet10t": dict(in_chans=3, img_size=64),  # from 64 px timm keeps its own stem
}
# modules that move no value past a sign or a BatchNorm in these tests: identity activations,
# dropout (eval mode, or in a binary layer's own slot), pooling, flattening
_CARRIERS = (nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d,
             nn.AdaptiveAvgPool2d)


def executed_modules(net: nn.Module, x: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """(module, input, output) of every leaf module and every Conv2d/Linear (whose own
    quantizers and dropout are not listed) in the order the forward pass runs them, carriers
    (``_CARRIERS``) left out."""
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    skip: set[str] = set()
    handles = []
    for name, module in net.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            skip.add(name)
        elif next(module.children(), None) is not None:
            continue
        handles.append(module.register_forward_hook(
            lambda m, args, out: calls.append((m, args[0].detach(), out.detach()))))
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return [call for call in calls if not isinstance(call[0], _CARRIERS)]


@pytest.mark.parametrize("method", ["xnor", "abcnet"])
@pytest.mark.parametrize("host", list(XNOR_BLOCK_HOSTS))
def test_xnor_block_keeps_the_relus_no_sign_reads(host, method):
    """alexnetxnor.lua: conv1 -> BN -> ReLU -> MaxPool (FP), [BN -> sign -> binary conv] for
    every binary layer, BN -> ReLU -> FP classifier. In the order the forward pass runs, in train
    and eval mode: the FP first layer is followed by BN, ReLU; the FP last layer is preceded by
    BN, ReLU (pooling, flatten and dropout aside), so the classifier's input is >= 0; every
    binary layer reads exactly the output of the BatchNorm run right before it
    (method.activation = identity)."""
    torch.manual_seed(0)
    kw = XNOR_BLOCK_HOSTS[host]
    net = create_method(method).convert(create_model(host, num_classes=10, **kw))
    x = torch.randn(2, kw["in_chans"], kw["img_size"], kw["img_size"])
    for train in (True, False):
        calls = executed_modules(net.train(train), x)
        kinds = [type(m).__name__ for m, _, _ in calls]
        weights = [i for i, (m, _, _) in enumerate(calls) if isinstance(m, (nn.Conv2d, nn.Linear))]
        first, last = weights[0], weights[-1]
        assert not is_quantized(calls[first][0]) and not is_quantized(calls[last][0])
        assert isinstance(calls[first + 1][0], nn.modules.batchnorm._BatchNorm), kinds
        assert kinds[first + 2] == "ReLU", kinds
        assert isinstance(calls[last - 2][0], nn.modules.batchnorm._BatchNorm), kinds
        assert kinds[last - 1] == "ReLU", kinds
        classifier_input = calls[last][1]
        assert classifier_input.min() >= 0 and classifier_input.max() > 0
        binary = [i for i in weights if is_quantized(calls[i][0])]
        assert binary and len(binary) == len(weights) - 2
        for i in binary:
            before, _, normalized = calls[i - 1]
            assert isinstance(before, nn.modules.batchnorm._BatchNorm), (i, kinds[i - 3:i + 1])
            assert torch.equal(calls[i][1], normalized)  # the sign's input is that BN's output


# --- 6. removing the latent clip does not freeze the weights --------------------------------------

@pytest.mark.parametrize("method", ["binaryconnect", "tang"])
def test_unclipped_weights_past_one_still_learn(method):
    """Authors' rule: dL/dW = dL/dW_b (unmasked); masking is the weight_grad_mask knob."""
    torch.manual_seed(0)
    for mask in (False, True):
        net = create_method(method, latent_clip=None, weight_grad_mask=mask).convert(mlp())
        layer = next(layer for _, layer in quantized_layers(net)
                     if tuple(layer.weight.shape) == (HIDDEN, HIDDEN))
        with torch.no_grad():
            layer.weight[:, :8] = 2.0  # past the bound: these used to get no gradient
        a = torch.randn(7, HIDDEN)
        r = torch.randn(7, HIDDEN)
        layer.eval()
        (layer(a) * r).sum().backward()
        expected = r.T @ layer.quantized_input(a).detach()  # d(sum r * (a_b W_b^T)) / dW_b
        if mask:
            expected = expected * (layer.weight.detach().abs() <= 1)
        torch.testing.assert_close(layer.weight.grad, expected)
        assert bool((layer.weight.grad[:, :8] != 0).any()) is not mask



# --- knobs with a corrected default ---------------------------------------------------------------

def test_tang_prediction_of_a_sample_does_not_depend_on_its_batch():
    """Default per-sample alpha: evaluating one image alone gives the logits it gets in a batch."""
    torch.manual_seed(0)
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)  # float32 noise could flip a sign(~0)
    for per_sample in (True, False):
        knobs = {} if per_sample else {"per_sample_alpha": False}
        net = create_method("tang", **knobs).convert(mlp()).double().eval()
        with torch.no_grad():
            same = torch.allclose(net(x)[:1], net(x[:1]), atol=1e-6, rtol=1e-5)
        assert same is per_sample


@pytest.mark.parametrize("method", ["bnn", "binaryconnect"])
def test_glorot_lr_scale_is_on_by_default(method, make_cfg):
    """Algorithm 1 / authors' W_LR_scale: binary layer lr x 1 / sqrt(1.5 / (fan_in + fan_out))."""
    from hydra.utils import instantiate

    for m in (create_method(method), instantiate(make_cfg([f"+method={method}"]).method)):
        net = m.convert(mlp())
        scales = {id(p): g.get("lr_scale", 1.0) for g in m.param_groups(net)
                  for p in g["params"]}
        binary = {id(layer.weight): layer for _, layer in quantized_layers(net)}
        assert binary
        for p in net.parameters():
            layer = binary.get(id(p))
            expected = 1.0 if layer is None else (
                1.5 / (layer.in_features + layer.out_features)) ** -0.5
            assert scales[id(p)] == pytest.approx(expected)


def test_tang_one_binarization_is_the_bare_sign():
    """Tables 2-3 (m = 1): the binary layers multiply sign(A) = +-1; m1_alpha scales it."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    for m1_alpha in (False, True):
        net = create_method("tang", activation_bits=1, m1_alpha=m1_alpha).convert(mlp()).eval()
        seen, remove = layer_inputs([net[6]])
        with recorded_products("linear") as calls:
            net(x)
        remove()
        (multiplied,) = [a for a, w in calls if tuple(w.shape) == (HIDDEN, HIDDEN)][:1]
        expected = ref_sign(seen[0])
        if m1_alpha:
            expected = expected * seen[0].abs().mean(1, keepdim=True)
        torch.testing.assert_close(multiplied, expected)
