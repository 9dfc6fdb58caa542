"""Packed export: exact weight decompositions, round trips for every method, file size, errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from torch import nn

from bnnbench.bench import trained_like_batchnorm
from bnnbench.errors import BnnbenchError
from bnnbench.export import export_run
from bnnbench.lit import predict
from bnnbench.methods import list_methods
from bnnbench.models import registry
from bnnbench.nn.blocks import ConvBlock
from bnnbench.nn.layers import is_quantized, quantized_layers
from bnnbench.packed.encoding import decode_weight, encode_weight
from bnnbench.packed.format import load_packed, read_metadata, save_packed
from bnnbench.packed.packing import pack_bits, unpack_bits
from bnnbench.size import account
from bnnbench.spec import build_data, build_net, spec_from_config
from bnnbench.train import run
from bnnbench.trained import load_trained
from tests.conftest import FAST

GEOMETRY = {"in_chans": 3, "num_classes": 10, "img_size": 8}


def tiny_convnet(*, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    """ConvBlocks (one grouped, one strided), then an MLP head: every layer kind the methods
    touch, small enough to round-trip in milliseconds (8 x 8 inputs)."""
    return nn.Sequential(
        ConvBlock(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                  nn.MaxPool2d(2)),
        ConvBlock(nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU()),
        ConvBlock(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Flatten(), nn.Linear(16 * (img_size // 4) ** 2, 32), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Linear(32, num_classes))


@pytest.fixture(autouse=True)
def tiny_convnet_registered(monkeypatch):
    """Exports rebuild only registered models: tiny_convnet joins the registry per test."""
    monkeypatch.setitem(registry._MODELS, "tiny_convnet", tiny_convnet)


def header_bytes(path: Path) -> int:
    """Safetensors: 8-byte little-endian header length, then the JSON header."""
    with path.open("rb") as fh:
        return 8 + struct.unpack("<Q", fh.read(8))[0]


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous().view(torch.int32)


# ---------------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("n", [1, 7, 8, 9, 33, 1000])
def test_pack_bits_round_trip(n):
    bits = torch.rand(n) < 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, n), bits)
    # LSB first, bit 1 = negative: the kernels' convention (32 per int32 word = 4 such bytes)
    assert int(pack_bits(torch.tensor([True, False, False, True]))[0]) == 0b1001


def _weights() -> dict[str, tuple[torch.Tensor, int, str]]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g)
    sign = torch.where(w >= 0, 1.0, -1.0)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    dead = alpha.clone()
    dead[0] = 0.0  # a dead filter: its -0.0 values must survive bit for bit
    grid = torch.round((w.tanh() / 2 / w.tanh().abs().max() + 0.5) * 3) / 3 * 2 - 1  # 2 bits
    bases = torch.stack([torch.where(w - u >= 0, 1.0, -1.0) for u in (-0.5, 0.0, 0.5)])
    abc = torch.tensordot(torch.tensor([0.2, 0.7, 0.3]), bases, dims=1)
    per_channel_grid = grid * torch.arange(1, 7.0).view(6, 1, 1, 1)
    return {
        "binarynet": (torch.where(w >= 0, 1.0, -1.0), 1, "sign/none"),
        "xnor": (alpha * torch.where(w >= 0, 1.0, -1.0), 1, "sign/channel"),
        "dorefa1": (w.abs().mean() * torch.where(w >= 0, 1.0, -1.0), 1, "sign/tensor"),
        "negzero": (dead * sign, 1, "sign/channel"),
        "dorefa2": (grid, 2, "codebook/tensor"),
        "abc3": (abc, 3, "codebook/tensor"),
        "per_channel_codebook": (per_channel_grid, 2, "codebook/channel"),
    }


@pytest.mark.parametrize("case", list(_weights()))
def test_encodings_are_bit_exact(case):
    wq, precision, expected = _weights()[case]
    meta, tensors = encode_weight(wq, precision)
    kind = f"{meta['encoding']}/{meta.get('scale') or meta.get('codebook')}"
    assert kind == expected
    assert torch.equal(as_bits(decode_weight(meta, tensors)), as_bits(wq))
    # stored bits: ceil(n / 8) bytes per plane, planes <= precision
    n = wq.numel()
    assert tensors["bits"].shape == (meta["planes"], (n + 7) // 8) and meta["planes"] <= precision


def test_too_many_values_for_the_precision_is_refused():
    with pytest.raises(BnnbenchError, match="distinct values"):
        encode_weight(torch.randn(4, 16), precision=2)


def test_a_quantizer_may_pack_its_own_factorization():
    class Halves(nn.Module):
        precision = 1

        def pack(self, wq):
            return {"bits": pack_bits(wq < 0), "half": torch.tensor([0.5])}

        def unpack(self, tensors, shape):
            neg = unpack_bits(tensors["bits"], int(torch.tensor(shape).prod()))
            return torch.where(neg, -tensors["half"], tensors["half"]).reshape(shape)

    wq = torch.where(torch.randn(3, 5) >= 0, 0.5, -0.5)
    meta, tensors = encode_weight(wq, 1, Halves())
    assert meta["encoding"] == "quantizer"
    assert torch.equal(decode_weight(meta, tensors, Halves()), wq)


# ---------------------------------------------------------------------------------- round trips
def tiny_export(make_cfg, tmp_path: Path, overrides: list[str]) -> tuple[nn.Module, Path]:
    """tiny_convnet converted by a method (trained-like BatchNorm statistics), eval mode, and
    its packed export."""
    cfg = make_cfg(overrides)
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": "bnnbench.models.create_model",
                                      "name": "tiny_convnet"})
    spec = spec_from_config(cfg)
    torch.manual_seed(0)
    net = trained_like_batchnorm(build_net(spec, GEOMETRY), seed=1).eval()
    return net, save_packed(net, tmp_path / "tiny.safetensors", spec, GEOMETRY)


@pytest.mark.parametrize("method", list_methods())
def test_conv_round_trip_is_exact_for_every_method(method, make_cfg, tmp_path):
    """Every registered method, on convs (grouped, strided) and linears: export -> load gives the
    same logits bit for bit, and the file is the accounting plus its header."""
    net, path = tiny_export(make_cfg, tmp_path, [f"+method={method}"])
    packed = load_packed(path, kernels="never")  # decoded weights, each layer's own forward
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(packed(x), net(x))
    on_disk = path.stat().st_size
    accounted = account(net, "deployed").total_bytes
    assert accounted <= on_disk - header_bytes(path) <= accounted * 1.02 + 64
    # the packed model holds no latent weights, and accounts to the same bytes
    assert all(layer.weight is None for _, layer in quantized_layers(packed) if
               is_quantized(layer))
    assert account(packed, "deployed").total_bytes == accounted


def test_bnn_layers_run_on_the_packed_kernels(make_cfg, tmp_path):
    """With bnnbench.kernels importable, BinaryNet's sign x sign layers run as XNOR-popcount
    (integer dot products), bit-exact with the trained float forward."""
    pytest.importorskip("bnnbench.kernels")
    from bnnbench.packed.routes import use_kernels

    net, path = tiny_export(make_cfg, tmp_path, ["+method=bnn"])
    plain, fast = load_packed(path, kernels="never"), load_packed(path, kernels="never")
    assert use_kernels(fast) == 3  # two binary convs (one grouped) and the binary linear
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fast(x), net(x)) and torch.equal(plain(x), net(x))


# method -> kernel routes of tiny_convnet's binarized layers, with the method options that
# decide them
ROUTES = {
    "bnn": ([], ["sign"] * 3),
    "xnor": ([], ["xnor"] * 3),
    "xnor_no_k": (["method.activation_scale=false"], ["xnor"] * 3),
    "tang": ([], ["residual"] * 4),  # Tang binarizes the last layer too (Table 3)
    "tang_m1_per_sample": (["method.activation_bits=1", "method.per_sample_alpha=true",
                            "method.m1_alpha=true"], ["residual"] * 4),
    "tang_m1": (["method.activation_bits=1"], ["sign"] * 4),  # the bare sign of Tables 2-3
    "binaryconnect": ([], ["binary_weight"] * 2),  # all layers; float-input convs keep theirs
    "bwn": ([], ["binary_weight"]),
    "dorefa": ([], []),
    "abcnet": ([], []),
}


@pytest.mark.parametrize("case", sorted(ROUTES))
def test_kernel_routes_match_the_trained_forward(case, make_cfg, tmp_path):
    """Every layer a method's packed model sends to bnnbench.kernels computes what the trained
    layer computes: bit for bit on BinaryNet's integer route, to float rounding on the scaled
    routes (XNOR-Net alpha and K, Tang's residual planes, binary weights x float inputs)."""
    pytest.importorskip("bnnbench.kernels")
    from bnnbench.packed.routes import kernel_route

    method = case.split("_")[0] if case.startswith(("xnor", "tang")) else case
    options, routes = ROUTES[case]
    net, path = tiny_export(make_cfg, tmp_path, [f"+method={method}", *options])
    fast = load_packed(path)
    assert [r for _, m in fast.named_modules() if (r := kernel_route(m))] == routes
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = net(x), fast(x)
    if set(routes) <= {"sign"}:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@lru_cache(maxsize=2)
def cached_test_loader(data_json: str):
    """The test split of a spec's data, loaded once for every parametrization."""
    dm = build_data({"data": json.loads(data_json)})
    dm.setup("test")
    return dm.test_dataloader()


@pytest.mark.parametrize("method", list_methods())
def test_trained_run_round_trip_predictions_and_size(method, make_cfg):
    """Train a few batches, export the run, load it packed: the same predictions on the whole
    test split, and a file whose size is the accounting plus the header."""
    run(make_cfg([f"+method={method}", *FAST, "model.hidden_features=128"]))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    path = export_run(run_dir)
    assert path == run_dir / "packed.safetensors"
    trained, spec, _ = load_trained(run_dir)
    packed = load_packed(path)
    loader = cached_test_loader(json.dumps(spec["data"], sort_keys=True))
    expected = predict(trained, loader)
    assert len(expected) == 1000
    assert torch.equal(predict(packed, loader), expected)
    meta_bytes = header_bytes(path)
    accounted = account(trained, "deployed").total_bytes
    assert abs(path.stat().st_size - meta_bytes - accounted) <= 0.02 * accounted
    if method != "fp":
        fp32 = account(trained, "deployed").fp32_bytes
        assert path.stat().st_size < fp32
    again = export_run(run_dir)  # never overwrites
    assert again.name == "packed-1.safetensors"


# ---------------------------------------------------------------------------------- bad input
def test_export_without_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "config_resolved.yaml").write_text("model: {}\n")
    with pytest.raises(BnnbenchError, match="no checkpoint at .*last.ckpt"):
        export_run(tmp_path)
    with pytest.raises(BnnbenchError, match="holds no run config"):
        export_run(tmp_path / "..")


def test_loading_a_file_that_is_not_an_export_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(BnnbenchError, match="is not a bnnbench export"):
        load_packed(text)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain), metadata={"format": "pt"})
    with pytest.raises(BnnbenchError, match="is not a bnnbench export"):
        load_packed(plain)
    with pytest.raises(BnnbenchError, match="does not exist"):
        load_packed(tmp_path / "missing.safetensors")


def test_export_cli_bad_input_is_one_line(tmp_path):
    (tmp_path / "config_resolved.yaml").write_text("model: {}\n")
    proc = subprocess.run([sys.executable, "-m", "bnnbench.export", f"run_dir={tmp_path}"],
                          text=True, capture_output=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bnnbench: error: no checkpoint at")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_export_cli_is_a_hydra_app(make_cfg, tmp_path):
    """--help is Hydra's; a checkpoint alone exports into hydra.run.dir, writing nothing else
    there (no .hydra/, no log, no run marker: export claims no training run directory)."""
    cmd = [sys.executable, "-m", "bnnbench.export"]
    helped = subprocess.run([*cmd, "--help"], text=True, capture_output=True, timeout=300)
    assert helped.returncode == 0 and "== Config ==" in helped.stdout
    assert "ckpt_path: null" in helped.stdout and "checkpoint: last" in helped.stdout
    run(make_cfg(["+method=bnn", *FAST, "model.hidden_features=32"]))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out = tmp_path / "out"
    proc = subprocess.run([*cmd, f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                           f"hydra.run.dir={out}"],
                          text=True, capture_output=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["packed.safetensors"]
    assert read_metadata(out / "packed.safetensors")["source"].endswith("best.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", run_dir.name]


@pytest.mark.parametrize("n", [1, 7, 32, 33, 100, 256])
def test_file_bits_and_kernel_words_share_one_bit_order(n):
    """One packing convention: the export's byte stream (LSB first, bit 1 = negative), read as
    little-endian int32, is exactly the kernels' sign words (``kernels.pack_signs``) of the same
    flattened weight; and both agree with a bit-by-bit reference."""
    from bnnbench.kernels import pack_signs

    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    x[0] = 0.0  # sign(0) = +1 -> bit 0 in both
    stream = pack_bits(x < 0)
    padded = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 4))
    words = padded.view(torch.int32)
    assert torch.equal(words, pack_signs(x))
    expected = [sum(int(x[8 * b + i] < 0) << i for i in range(8) if 8 * b + i < n)
                for b in range(stream.numel())]
    assert stream.tolist() == expected
