"""Memory of the packed model, checked without timing or RSS: the kernels' weight words are the
file's bits wherever the layouts agree (no copy), exact where they are rebuilt, and loading
never creates a float tensor the size of a binary layer's weight nor holds more bytes than the
file plus the conv words that cannot alias it."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bnnbench.bench import trained_like_batchnorm
from bnnbench.models import registry
from bnnbench.nn.blocks import ConvBlock
from bnnbench.nn.layers import QuantLinear
from bnnbench.packed.encoding import PackedWeight, to_bit_order
from bnnbench.packed.format import load_packed, save_packed
from bnnbench.packed.packing import kernel_words_from_bits, pack_bits, unpack_bits
from bnnbench.spec import build_net, spec_from_config

K = pytest.importorskip("bnnbench.kernels")

GEOMETRY = {"in_chans": 3, "num_classes": 10, "img_size": 8}


def mem_convnet(*, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    """Every weight layout the routes meet: a 3x3 conv of 32 input channels and a 1x1 conv of
    64 (the file's bits are the words), a conv and a linear layer whose fan-in is not a
    multiple of 32 (words rebuilt, padded), a linear layer of fan-in 64 (no copy)."""
    del img_size
    return nn.Sequential(
        ConvBlock(nn.Conv2d(in_chans, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()),
        ConvBlock(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()),
        ConvBlock(nn.Conv2d(64, 40, 1), nn.BatchNorm2d(40), nn.ReLU()),
        ConvBlock(nn.Conv2d(40, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(48, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 96), nn.BatchNorm1d(96), nn.ReLU(),
        nn.Linear(96, num_classes))


@pytest.fixture(autouse=True)
def mem_convnet_registered(monkeypatch):
    monkeypatch.setitem(registry._MODELS, "mem_convnet", mem_convnet)


# ------------------------------------------------------------------ weight words from stored bits

SHAPES = [  # (shape, conv, the stored bytes are the words: fan-in a multiple of 32)
    ((8, 64), False, True), ((5, 33), False, False), ((3, 7), False, False),
    ((16, 32, 3, 3), True, True), ((16, 64, 1, 1), True, True), ((8, 5, 3, 3), True, False),
    ((6, 40, 1, 1), True, False), ((4, 32, 1, 3), True, True), ((3, 33, 2, 2), True, False)]


@pytest.mark.parametrize("chunk_bits", [1, 100, 1 << 16])
@pytest.mark.parametrize(("shape", "conv", "aliases"), SHAPES)
def test_kernel_words_from_bits_equal_the_kernels_packing(shape, conv, aliases, chunk_bits):
    """Against ``kernels.pack_signs``/``pack_conv_weight`` of the float weight (an independent
    packing); where the layouts agree the words are the bits' own storage, else a new tensor."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    w.view(-1)[::5] = 0.0  # sign(0) = +1: bit 0 in both
    bits = pack_bits(to_bit_order(w) < 0)  # the file's order: conv weights channels last
    expected = K.pack_conv_weight(w) if conv else K.pack_signs(w)
    words = kernel_words_from_bits(bits, list(shape), chunk_bits=chunk_bits)
    assert words.dtype == torch.int32 and words.is_contiguous()
    assert torch.equal(words, expected)
    assert (words.untyped_storage().data_ptr() == bits.untyped_storage().data_ptr()) == aliases


def test_misaligned_bits_are_copied_not_viewed():
    """A bit stream that does not start on a 4-byte boundary cannot be viewed as int32 words:
    the words are rebuilt (still exact)."""
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    stream = torch.cat([torch.zeros(1, dtype=torch.uint8), pack_bits(w < 0)])[1:]
    assert stream.data_ptr() % 4 != 0
    words = kernel_words_from_bits(stream, [8, 64])
    assert torch.equal(words, K.pack_signs(w))
    assert words.untyped_storage().data_ptr() != stream.untyped_storage().data_ptr()


# ------------------------------------------------------------------------------ the loaded model

def _export(make_cfg, tmp_path, overrides, geometry):
    cfg = make_cfg(["+method=bnn", *overrides[1:]])
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": "bnnbench.models.create_model",
                                      "name": overrides[0]}) if overrides[0] == "mem_convnet" \
            else cfg.model
    spec = spec_from_config(cfg)
    torch.manual_seed(0)
    net = trained_like_batchnorm(build_net(spec, geometry)).eval()
    return net, save_packed(net, tmp_path / "net.safetensors", spec, geometry)


CASES = [(["mem_convnet"], GEOMETRY),  # registered here, not a config: built by name
         (["mlp", "model=mlp", "model.hidden_features=96"],
          {"in_chans": 1, "num_classes": 10, "img_size": 8})]


class _Allocations(TorchDispatchMode):
    """Every tensor an aten op returns while active: (op, dtype, numel, owns new storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))
                  if t.device.type != "meta"}
        for t in _tensors(out):
            if t.device.type != "meta" and t.untyped_storage().data_ptr() not in inputs:
                self.seen.append((str(func), t.dtype, t.numel()))
        return out


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


@pytest.mark.parametrize(("overrides", "geometry"), CASES, ids=["convnet", "mlp"])
def test_loading_never_materializes_a_binary_weight(make_cfg, tmp_path, overrides, geometry,
                                                   monkeypatch):
    """load_packed allocates no float tensor as large as a binary layer's weight (no decoded
    weight, no float architecture filled then replaced), and no tensor of any dtype larger than
    a few hundred KiB; the packed model still predicts what the trained one does. (The
    BatchNorm -> sign folds evaluate one d at a time here, so their float grids are one value
    per channel, smaller than any weight.)"""
    import bnnbench.packed.fusion as fusion

    monkeypatch.setattr(fusion, "_CHUNK_ELEMENTS", 1)
    net, path = _export(make_cfg, tmp_path, overrides, geometry)
    with torch.no_grad(), _Allocations() as allocs:
        packed = load_packed(path)
    binary = [m.weight_quantizer for m in packed.modules()
              if isinstance(getattr(m, "weight_quantizer", None), PackedWeight)]
    assert binary and all(hasattr(m, "xnor_weight") for m in packed.modules()
                          if isinstance(getattr(m, "weight_quantizer", None), PackedWeight))
    smallest = min(torch.Size(q.meta["shape"]).numel() for q in binary)
    floats = [(op, n) for op, dtype, n in allocs.seen if dtype.is_floating_point]
    assert all(n < smallest for _, n in floats), max(floats, key=lambda f: f[1])
    # the words are written into one tensor per layer, no layer-sized temporaries beside them
    words = sum(m.xnor_weight.numel() * 4 for m in packed.modules() if hasattr(m, "xnor_weight"))
    assert max((n * d.itemsize for _, d, n in allocs.seen), default=0) <= max(words, 1 << 18)
    # the folds are made while loading, before any activation exists (their long-lived tables
    # placed among a first forward's freed activations made later forwards' heap grow)
    assert all((torch.float32, torch.device("cpu")) in c.folds for c in packed.sign_chains)
    assert packed.sign_chains or overrides[0] == "mem_convnet"  # its convs have biases
    x = torch.randn(5, geometry["in_chans"], geometry["img_size"], geometry["img_size"],
                    generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(packed(x), net(x))


def _unique_storage_bytes(module: nn.Module) -> dict[int, int]:
    tensors = [t for _, t in module.named_parameters(remove_duplicate=False)]
    tensors += [t for name, t in module.named_buffers(remove_duplicate=False)
                if not name.endswith("num_batches_tracked")]  # BatchNorm's 8-byte counter
    tensors += [v for m in module.modules() for v in vars(m).values()
                if isinstance(v, torch.Tensor)]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in tensors if t is not None and t.device.type != "meta"}


@pytest.mark.parametrize(("overrides", "geometry"), CASES, ids=["convnet", "mlp"])
def test_loaded_model_holds_the_file_plus_only_unaliasable_words(make_cfg, tmp_path, overrides,
                                                                 geometry):
    """Every byte the loaded model holds is a byte of the file, except the kernel words of the
    layers whose fan-in is not a multiple of 32 (their rows are padded to whole words); the
    other layers, convs included, run on the file's bits."""
    _, path = _export(make_cfg, tmp_path, overrides, geometry)
    packed = load_packed(path)
    copied = 0
    for layer in packed.modules():
        if not hasattr(layer, "xnor_weight"):
            continue
        shape = layer.weight_quantizer.meta["shape"]
        shared = (layer.xnor_weight.untyped_storage().data_ptr()
                  == layer.weight_quantizer.bits.untyped_storage().data_ptr())
        assert shared == (shape[1] % 32 == 0), (shape, shared)
        if not shared:
            copied += layer.xnor_weight.untyped_storage().nbytes()
    assert copied > 0 if overrides[0] == "mem_convnet" else copied == 0
    with path.open("rb") as fh:  # safetensors: 8-byte header length, JSON header, tensor data
        data_bytes = path.stat().st_size - 8 - struct.unpack("<Q", fh.read(8))[0]
    assert sum(_unique_storage_bytes(packed).values()) == data_bytes + copied


def test_version_2_files_still_load(make_cfg, tmp_path):
    """A version-2 file (conv bit planes in the weight's (O, C/g, KH, KW) order) loads to the
    same predictions: its conv planes are put channels last on load."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    net, path = _export(make_cfg, tmp_path, ["mem_convnet"], GEOMETRY)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for name, lmeta in json.loads(meta["layers"]).items():
        shape = lmeta["shape"]
        if len(shape) == 4:  # back to version 2's order, bit by bit
            neg = unpack_bits(tensors[f"{name}.weight.bits"][0], torch.Size(shape).numel())
            old = neg.reshape(shape[0], *shape[2:], shape[1]).permute(0, 3, 1, 2)
            tensors[f"{name}.weight.bits"] = pack_bits(old)[None]
    old_path = tmp_path / "v2.safetensors"
    save_file(tensors, str(old_path), metadata={**meta, "format_version": "2"})
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(load_packed(old_path)(x), net(x))
        assert torch.equal(load_packed(old_path, kernels="never")(x), net(x))
