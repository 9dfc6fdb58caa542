"""Models: the papers' parameter counts, layouts at paper resolution, small-input adaptations,
and every model under every binarization method (parametrized over both registries)."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from bnnbench.errors import BnnbenchError
from bnnbench.methods import list_methods
from bnnbench.models import create_model, list_models
from bnnbench.nn.blocks import XNOR_ORDER, ConvBlock
from tests.conftest import compose_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors run faster on one intra-op thread: two threads spin at OpenMP barriers,
    which on a busy 2-core machine costs up to 10x (measured: ResNet-34 step 0.3 s vs 4 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    full_precision.cache_clear()


def conv_fc_params(model: nn.Module) -> int:
    """Caffe's count: weights and biases of every Conv2d and Linear (no BatchNorm, no LRN)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for p in m.parameters(recurse=False))


def all_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (name, kwargs, input side, what is counted, expected count, module whose input is the last
# feature map, its side). Counts: Tang et al. 2017 / Caffe model zoo (AlexNet, NIN), torchvision
# and timm (ResNet-18, every parameter including BatchNorm).
PAPER_LAYOUTS = [
    ("alexnet", {"norm": "lrn"}, 227, all_params, 60_965_224, "pool", 6),
    ("alexnet", {"norm": "lrn"}, 224, all_params, 60_965_224, "pool", 6),
    ("alexnet", {"norm": "bn"}, 224, conv_fc_params, 60_965_224, "pool", 6),
    ("nin", {"bn": False}, 224, all_params, 7_595_176, "features.cccp8", 6),
    ("nin", {}, 227, conv_fc_params, 7_595_176, "features.cccp8", 6),
    ("nin_expanded", {"bn": False}, 224, all_params, 9_088_232, "features.cccp8", 6),
    ("nin_expanded", {}, 224, conv_fc_params, 9_088_232, "features.cccp8", 6),
    ("resnet18", {}, 224, all_params, 11_689_512, "global_pool", 7),
    ("vgg_small", {}, 32, conv_fc_params, 14_022_016, "pool", 4),
]


@pytest.mark.parametrize("name, kwargs, size, count, expected, module, side", PAPER_LAYOUTS,
                         ids=[f"{p[0]}-{p[2]}-{p[3].__name__}" for p in PAPER_LAYOUTS])
def test_paper_layout_and_parameter_count(name, kwargs, size, count, expected, module, side):
    classes = 10 if name == "vgg_small" else 1000
    model = create_model(name, in_chans=3, num_classes=classes, img_size=size, **kwargs).eval()
    assert count(model) == expected
    seen = []
    model.get_submodule(module).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, classes)
    assert seen[0].shape[-2:] == (side, side)


def test_alexnet_has_caffe_grouped_convs_and_lrn_flag():
    lrn = create_model("alexnet", in_chans=3, num_classes=1000, img_size=227, norm="lrn")
    convs = [m for m in lrn.modules() if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in lrn.modules()) == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in lrn.modules())
    bn = create_model("alexnet", in_chans=3, num_classes=1000, img_size=227)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in bn.modules())
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bn.modules()) == 7
    with pytest.raises(BnnbenchError, match="model.norm"):
        create_model("alexnet", in_chans=3, num_classes=10, img_size=32, norm="gn")


def test_expanded_nin_is_tangs_expansion():
    base = create_model("nin", in_chans=3, num_classes=1000, img_size=224)
    wide = create_model("nin_expanded", in_chans=3, num_classes=1000, img_size=224)
    shape = {n: tuple(m.conv.weight.shape) for n, m in wide.features.named_children()
             if isinstance(m, ConvBlock)}
    assert shape["cccp1"] == (128, 96, 3, 3) and shape["cccp2"] == (128, 128, 3, 3)
    assert shape["cccp3"] == shape["cccp4"] == (256, 256, 3, 3)
    assert shape["cccp5"] == (384, 384, 1, 1)  # only the first four cccp kernels grow
    assert base.features.cccp1.conv.weight.shape == (96, 96, 1, 1)


GEOMETRIES = [(1, 28, 10), (3, 32, 10), (3, 64, 5)]  # MNIST, CIFAR, the paper stem's edge


@pytest.mark.parametrize("in_chans, size, classes", GEOMETRIES,
                         ids=[f"{c}x{s}-{k}" for c, s, k in GEOMETRIES])
@pytest.mark.parametrize("name", list_models())
def test_every_model_adapts_to_the_data_geometry(name, in_chans, size, classes):
    narrow = {"mlp": {"hidden_features": 64}, "reactnet_a": {"width_multiplier": 0.25}}
    kwargs = narrow.get(name, {})
    model = create_model(name, in_chans=in_chans, num_classes=classes, img_size=size,
                         **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, classes)


@pytest.mark.parametrize("name", ["vgg_small", "alexnet", "nin", "nin_expanded"])
def test_plain_cnns_are_conv_blocks_that_xnor_can_reorder(name):
    """Every conv sits in a ConvBlock; the XNOR order bn -> binarize -> conv -> pool still runs."""
    model = create_model(name, in_chans=3, num_classes=10, img_size=32)
    blocks = [m for m in model.modules() if isinstance(m, ConvBlock)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(blocks) == len(convs) and all(isinstance(b.conv, nn.Conv2d) for b in blocks)
    for block in blocks[1:]:
        block.set_order(XNOR_ORDER)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)


SMALL = 16  # a small input keeps 8 methods x 7 models fast; every model still sees >= 2x2 maps


@functools.cache
def full_precision(model_name: str, tmp: str) -> nn.Module:
    """The shipped config's model at 3 x 16 x 16, 10 classes, built once (methods get a copy)."""
    # AlexNet's 4096-wide fc6/fc7 (55M weights) and ReActNet-A's 29M parameters only slow every
    # method down; same layouts at 512 / a quarter of the width
    narrow = {"alexnet": ["model.fc_features=512"],
              "reactnet_a": ["model.width_multiplier=0.25"]}.get(model_name, [])
    cfg = compose_config([f"model={model_name}", *narrow], Path(tmp))
    return instantiate(cfg.model, in_chans=3, num_classes=10, img_size=SMALL)


@pytest.mark.parametrize("model_name", list_models())
@pytest.mark.parametrize("method_name", list_methods())
def test_every_model_trains_under_every_method(tmp_path_factory, method_name, model_name):
    """Compose the shipped YAML (+method=<m>), convert a copy of the shipped model, one training
    step on a small input: logits, finite loss and gradients, the method's hooks."""
    cfg = compose_config([f"+method={method_name}"], tmp_path_factory.mktemp("cfg"))
    method = instantiate(cfg.method)
    base = full_precision(model_name, str(tmp_path_factory.getbasetemp()))
    net = method.convert(copy.deepcopy(base))
    net.train()
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, SMALL, SMALL), torch.tensor([1, 7])
    logits = net(x)
    assert logits.shape == (2, 10)
    loss = method.loss(logits, y)
    reg = method.regularizer(net)
    if reg is not None:
        loss = loss + reg
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    groups = method.param_groups(net)
    assert sum(len(g["params"]) for g in groups) >= 1
    method.after_optimizer_step(net)


MODEL_CONFIGS = [("vgg_small", []), ("alexnet", []), ("nin", []), ("nin_expanded", []),
                 ("timm", ["model.name=mobilenetv3_small_100"]), ("resnet18", []), ("mlp", []),
                 ("reactnet_a", ["model.width_multiplier=0.25"])]


@pytest.mark.parametrize("config, overrides", MODEL_CONFIGS, ids=[c for c, _ in MODEL_CONFIGS])
def test_model_config_composes_and_instantiates(tmp_path, config, overrides):
    cfg = compose_config([f"model={config}", *overrides], tmp_path)
    net = instantiate(cfg.model, in_chans=1, num_classes=10, img_size=28).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_timm_config_needs_a_name(tmp_path):
    cfg = compose_config(["model=timm"], tmp_path)
    with pytest.raises(Exception, match="name"):
        instantiate(cfg.model, in_chans=3, num_classes=10, img_size=32)
