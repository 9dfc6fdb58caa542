"""Packed files and kernel calls a user can hand us: one clear line or the right answer, never a
crash, an out-of-bounds read, a resource bomb or a silently different answer.

A crash (SIGBUS, segfault) is the failure mode of several cases, so those run in a subprocess
whose exit status is the assertion.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bnnbench.errors import BnnbenchError
from bnnbench.packed.format import FORMAT, FORMAT_VERSION, load_packed, save_packed
from bnnbench.packed.reader import MAX_JSON_DEPTH, PackedFileError
from bnnbench.spec import build_net
from tests.conftest import ROOT

K = pytest.importorskip("bnnbench.kernels")
from bnnbench.kernels import KernelInputError, cpu  # noqa: E402

MNIST = {"in_chans": 1, "num_classes": 10, "img_size": 28}
SMALL = {"in_chans": 1, "num_classes": 10, "img_size": 4}


def spec_of(method: str, knobs: dict | None = None, hidden: int = 64, depth: int = 2) -> dict:
    return {"model": {"name": "mlp", "kwargs": {"hidden_features": hidden, "depth": depth}},
            "method": {"name": method, "knobs": knobs or {}},
            "data": {"name": "synthetic", "args": {}}}


def export(tmp_path: Path, spec: dict, geometry: dict, name: str = "net") -> tuple:
    """A trained-like network (random BatchNorm statistics) and its export."""
    from bnnbench.bench import trained_like_batchnorm

    torch.manual_seed(0)
    net = trained_like_batchnorm(build_net(spec, geometry)).eval()
    return net, save_packed(net, tmp_path / f"{name}.safetensors", spec, geometry)


def raw_file(path: Path) -> tuple[dict, bytes]:
    """(header JSON, data bytes) of a safetensors file, read by hand."""
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_raw(path: Path, header: dict | bytes, data: bytes) -> Path:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def edit_meta(path: Path, out: Path, key: str, fn) -> Path:
    """``path`` with its metadata JSON field ``key`` replaced by ``fn(value)`` (tensors kept)."""
    header, data = raw_file(path)
    meta = header["__metadata__"]
    meta[key] = json.dumps(fn(json.loads(meta[key])))
    return write_raw(out, header, data)


def one_line(err: BaseException) -> bool:
    return "\n" not in str(err) and len(str(err)) < 400


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


# ------------------------------------------------------------------ 1. the file after loading
@pytest.mark.parametrize("change", ["truncate", "overwrite"])
def test_a_loaded_model_does_not_depend_on_its_file(tmp_path, change):
    """Truncated or overwritten after loading, the file changes nothing: same outputs, no
    SIGBUS (a subprocess, so a crash fails this test instead of killing pytest)."""
    net, path = export(tmp_path, spec_of("bnn"), MNIST)
    _, other = export(tmp_path, spec_of("bnn", hidden=32), MNIST, name="other")
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    edit = ("open(p, 'r+b').truncate(100)" if change == "truncate"
            else f"open(p, 'r+b').write(open({str(other)!r}, 'rb').read())")
    proc = run_python(f"""
        import torch
        from bnnbench.packed.format import load_packed
        io = torch.load({str(tmp_path / 'io.pt')!r})
        p = {str(path)!r}
        models = [load_packed(p), load_packed(p, kernels="never")]
        {edit}
        with torch.no_grad():
            for m in models:
                assert torch.equal(m(io["x"]), io["y"]), "changed"
        print("same")
        """)
    assert proc.returncode == 0 and "same" in proc.stdout, (proc.returncode, proc.stderr[-1500:])


def test_mmap_is_an_explicit_option_and_gives_the_same_model(tmp_path):
    net, path = export(tmp_path, spec_of("bnn"), MNIST)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(load_packed(path, mmap=True)(x), net(x))
    with pytest.raises(BnnbenchError, match="mmap="):
        load_packed(path, mmap="yes")


# ------------------------------------------------------------------ 2. inputs of the wrong size
@pytest.mark.parametrize("method, knobs, first_packed", [
    ("binaryconnect", {}, True), ("bnn", {"fp_first": False}, True),
    ("bnn", {}, False), ("xnor", {"fp_first": False}, False)])
@pytest.mark.parametrize("kwargs", [{}, {"fuse": False}, {"kernels": "never"}],
                         ids=["fused", "unfused", "never"])
def test_a_27x29_image_into_a_784_input_mlp_is_refused(tmp_path, method, knobs, first_packed,
                                                       kwargs):
    """783 features fit the same 25 words as 784: the kernels alone would accept them. The
    trained model refuses; so does the packed one: a packed first layer with the same line on
    every route, a full-precision first module (BinaryNet's fp_first layer, XNOR-Net's input
    BatchNorm) with the trained model's own error. Never a prediction."""
    net, path = export(tmp_path, spec_of(method, knobs), MNIST)
    bad = torch.randn(2, 1, 27, 29)
    with pytest.raises(RuntimeError) as trained:
        net(bad)
    packed = load_packed(path, **kwargs)
    if first_packed:
        with pytest.raises(BnnbenchError, match=r"takes 784 input features, got 783 \(input "
                                                r"shape \(2, 783\)\)") as err:
            packed(bad)
        assert one_line(err.value)
    else:
        with pytest.raises(RuntimeError) as err:
            packed(bad)
        assert str(err.value) == str(trained.value)
    good = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert packed(good).argmax(1).tolist() == net(good).argmax(1).tolist()


def test_every_packed_layer_checks_its_input_not_only_the_first(tmp_path):
    """A hidden layer fed the wrong width directly, on each route."""
    _, path = export(tmp_path, spec_of("bnn", {"fp_first": False}), MNIST)
    for kwargs in ({}, {"fuse": False}, {"kernels": "never"}):
        hidden = load_packed(path, **kwargs).get_submodule("6")
        assert hidden.in_features == 64
        with pytest.raises(BnnbenchError, match="takes 64 input features, got 40"):
            hidden(torch.randn(3, 40))


def test_a_conv_input_with_fewer_channels_is_one_line(tmp_path):
    """27 channels fit the word of 32 a conv of 32 input channels reads."""
    from tests.test_packed_memory import GEOMETRY, mem_convnet  # noqa: F401 (registered below)
    from bnnbench.models import registry

    registry._MODELS["mem_convnet"] = mem_convnet
    try:
        spec = {"model": {"name": "mem_convnet", "kwargs": {}},
                "method": {"name": "bnn", "knobs": {"fp_first": False}},
                "data": {"name": "synthetic", "args": {}}}
        _, path = export(tmp_path, spec, GEOMETRY)
        packed = load_packed(path)
        with pytest.raises(BnnbenchError, match=r"takes 3 input features, got 2"):
            packed(torch.randn(1, 2, 8, 8))
    finally:
        registry._MODELS.pop("mem_convnet")


# ------------------------------------------------------------------ 3. kernels.cpu and the ops
def words(rows: int, k: int) -> torch.Tensor:
    return K.pack_signs(torch.randn(rows, k, generator=torch.Generator().manual_seed(rows + k)))


CPU_MISMATCHES = [
    ("xnor_gemm, a 64 words, w 1 word", lambda: cpu.xnor_gemm(words(2, 2048), words(4, 32), 2048),
     "w_packed has 1 words"),
    ("xnor_gemm, k over the words", lambda: cpu.xnor_gemm(words(2, 64), words(4, 64), 2048),
     "a_packed has 2 words"),
    ("xnor_gemm, float a", lambda: cpu.xnor_gemm(torch.randn(2, 2), words(4, 64), 64),
     "must be int32"),
    ("xnor_gemm, 3-D a", lambda: cpu.xnor_gemm(words(2, 64)[None], words(4, 64), 64),
     "must be \\(M, KW\\)"),
    ("binary_weight_gemm, K over the words",
     lambda: cpu.binary_weight_gemm(torch.randn(2, 2048), words(4, 32), None, None),
     "w_packed has 1 words"),
    ("binary_weight_gemm, short scale",
     lambda: cpu.binary_weight_gemm(torch.randn(2, 32), words(4, 32), torch.ones(3), None),
     "scale must have shape \\(4,\\)"),
    ("binary_conv2d, channels over the words",
     lambda: cpu.binary_conv2d(torch.randn(1, 64, 5, 5),
                               K.pack_conv_weight(torch.randn(4, 8, 3, 3)), None, None, 1, 0, 1),
     "w_packed has 1 words per tap"),
    ("binary_conv2d, padding 2**63",
     lambda: cpu.binary_conv2d(torch.randn(1, 8, 5, 5),
                               K.pack_conv_weight(torch.randn(4, 8, 3, 3)), None, None, 1,
                               2**63, 1), "padding must be an int or a pair of ints"),
    ("multibit, alpha rows",
     lambda: cpu.multibit_xnor_gemm(words(2, 64)[None], words(4, 64), torch.ones(1, 3), 64,
                                    None, None), "alpha must have shape"),
    ("conv signs, thresholds",
     lambda: cpu.binary_conv2d_signs(torch.randn(1, 8, 5, 5),
                                     K.pack_conv_weight(torch.randn(4, 8, 3, 3)),
                                     torch.zeros(3, dtype=torch.int32),
                                     torch.zeros(4, dtype=torch.int32), 1, 0, 1),
     "threshold must be an int32 tensor of shape \\(4,\\)"),
    ("pack_signs, int", lambda: cpu.pack_signs(torch.ones(2, 3, dtype=torch.int64)),
     "must be float16, bfloat16 or float32"),
    ("pack_signs, empty", lambda: cpu.pack_signs(torch.ones(2, 0)), "at least one element"),
    ("residual planes, planes", lambda: cpu.residual_sign_planes(torch.randn(2, 8), 0, False),
     "num_planes must be"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in CPU_MISMATCHES],
                         ids=[c[0] for c in CPU_MISMATCHES])
def test_kernels_cpu_validates_before_compiled_code(call, message):
    with pytest.raises(KernelInputError, match=message) as err:
        call()
    assert one_line(err.value)


def test_a_huge_word_count_does_not_segfault():
    """xnor_gemm with a 1e7-word activation against a 1-word weight: one line, in a subprocess
    (reading past the weight segfaulted)."""
    proc = run_python("""
        import torch
        from bnnbench.kernels import cpu, KernelInputError
        a = torch.zeros(1, 10**7, dtype=torch.int32)
        w = torch.zeros(4, 1, dtype=torch.int32)
        for call in (lambda: cpu.xnor_gemm(a, w, 32 * 10**7),
                     lambda: torch.ops.bnnbench.xnor_gemm(a, w, 32 * 10**7, "cpu")):
            try:
                call()
            except KernelInputError as err:
                print("refused:", err)
        """)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.count("refused: ") == 2 and "w_packed has 1 words" in proc.stdout


def set_pad_bit(packed: torch.Tensor) -> torch.Tensor:
    out = packed.clone()
    out[..., -1] |= 1 << 30
    return out


def test_set_padding_bits_are_refused_not_counted():
    """k = 70: bits 6..31 of the last word are padding; a set one would change every dot."""
    a, w = words(3, 70), words(5, 70)
    want = K.xnor_gemm(a, w, 70, backend="reference")
    assert torch.equal(K.xnor_gemm(a, w, 70), want)
    for call in (lambda: K.xnor_gemm(set_pad_bit(a), w, 70),
                 lambda: K.xnor_gemm(a, set_pad_bit(w), 70),
                 lambda: cpu.xnor_gemm(a, set_pad_bit(w), 70),
                 lambda: K.multibit_xnor_gemm(set_pad_bit(a)[None], w, torch.ones(1), 70)):
        with pytest.raises(KernelInputError, match="padding bits set past k=70"):
            call()
    wc = K.pack_conv_weight(torch.randn(4, 40, 3, 3))
    with pytest.raises(KernelInputError, match="padding bits"):
        K.binary_conv2d(torch.randn(1, 40, 5, 5), set_pad_bit(wc))


@pytest.mark.parametrize("call, message", [
    (lambda: K.pack_signs(torch.randn(2, 3), dim=5), "dim=5 is not a dim of x"),
    (lambda: K.unpack_signs(words(2, 64), 64, dim=7), "dim=7 is not a dim of packed"),
    (lambda: K.binary_conv2d(torch.randn(1, 8, 5, 5), K.pack_conv_weight(torch.randn(4, 8, 3, 3)),
                             stride=1.5), "stride must be an int or a pair of ints"),
    (lambda: K.binary_conv2d(torch.randn(1, 8, 5, 5), K.pack_conv_weight(torch.randn(4, 8, 3, 3)),
                             padding=2**63), "padding must be an int or a pair"),
    (lambda: K.binary_conv2d(torch.randn(1, 8, 5, 5), K.pack_conv_weight(torch.randn(4, 8, 3, 3)),
                             padding=100000), "must be at most the kernel size"),
    (lambda: K.binary_conv2d(torch.randn(1, 8, 5, 5), K.pack_conv_weight(torch.randn(4, 8, 3, 3)),
                             groups=True), "groups must be a positive int"),
])
def test_kernel_api_bad_arguments_are_one_line(call, message):
    with pytest.raises(KernelInputError, match=message) as err:
        call()
    assert one_line(err.value)


def test_padding_up_to_the_kernel_still_equals_the_reference():
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(4))
    w = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(5))
    wp = K.pack_conv_weight(w)
    for padding in (3, (1, 3)):
        # zero padding of the +-1 input: padded taps contribute 0 (the trained conv's function)
        pad = (padding, padding) if isinstance(padding, int) else padding
        want = torch.nn.functional.conv2d(torch.where(x < 0, -1.0, 1.0),
                                          torch.where(w < 0, -1.0, 1.0), padding=pad)
        assert torch.equal(K.binary_conv2d(x, wp, padding=padding), want)


# ------------------------------------------------------------------ 5. NaN inputs: one rule
def test_sign_of_nan_is_plus_one_on_every_path():
    """sign(x) = -1 iff x < 0: NaN and -0.0 map to +1 in the float quantizer, the functional
    sign, the packing and the CPU kernels alike."""
    from bnnbench.functional import residual_planes, sign_ste
    from bnnbench.nn.quantizers import SignQuantizer

    x = torch.tensor([[float("nan"), -0.0, 0.0, -1.0, 2.0, float("-inf"), float("inf")] * 5])
    want = torch.tensor([[1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0] * 5])
    assert torch.equal(SignQuantizer().eval()(x), want)
    assert torch.equal(sign_ste(x), want)
    assert torch.equal(residual_planes(x, 1, False)[1][0], want)
    from bnnbench.nn.modern_layers import approx_sign
    assert torch.equal(approx_sign(x), want)  # Bi-Real / ReActNet's activations
    for backend in ("cpu", "reference"):
        assert torch.equal(K.unpack_signs(K.pack_signs(x, backend=backend), x.shape[-1]), want)
    # the dot of the NaN row with itself counts every position as (+-1)^2 = 1
    packed = K.pack_signs(x)
    assert K.xnor_gemm(packed, packed, x.shape[-1]).item() == x.shape[-1]
    conv = K.binary_conv2d(x.reshape(1, 35, 1, 1), K.pack_conv_weight(torch.ones(1, 35, 1, 1)))
    assert conv.item() == want.sum().item()


@pytest.mark.parametrize("method, knobs", [("bnn", {}), ("bnn", {"fp_first": False}),
                                           ("binaryconnect", {}), ("xnor", {"fp_first": False})])
def test_a_nan_pixel_gets_the_same_class_float_and_packed(tmp_path, method, knobs):
    net, path = export(tmp_path, spec_of(method, knobs), MNIST)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    x[:, 0, 3, 5] = float("nan")
    with torch.no_grad():
        trained = net(x)
        for kwargs in ({}, {"fuse": False}, {"kernels": "never"}):
            out = load_packed(path, **kwargs)(x)
            assert out.argmax(1).tolist() == trained.argmax(1).tolist()
            assert torch.equal(out.isnan(), trained.isnan())


# ------------------------------------------------------------------ 6, 7, 9. hostile files
@pytest.fixture
def small_export(tmp_path) -> Path:
    return export(tmp_path, spec_of("bnn", hidden=16), SMALL)[1]


def kwarg(**update):
    return lambda spec: {**spec, "model": {**spec["model"],
                                           "kwargs": {**spec["model"]["kwargs"], **update}}}


@pytest.mark.parametrize("key, fn, message", [
    ("spec", kwarg(depth=100000), "far more layers than the file"),
    ("spec", kwarg(hidden_features=2**40), "cannot be built"),
    ("spec", kwarg(hidden_features=2**20), "does not match the model"),
    ("spec", lambda s: {**s, "model": {**s["model"], "name": "hf-hub:timm/resnet18"}},
     "not a registered model or a plain timm model name"),
    ("spec", lambda s: {**s, "model": {**s["model"], "name": "local-dir:/etc"}},
     "not a registered model or a plain timm model name"),
    ("spec", lambda s: {**s, "model": {**s["model"], "name": "../resnet18"}},
     "not a registered model"),
])
def test_hostile_specs_are_refused_fast(small_export, tmp_path, key, fn, message):
    bad = edit_meta(small_export, tmp_path / "bad.safetensors", key, fn)
    start = time.perf_counter()
    with pytest.raises(BnnbenchError, match=message) as err:
        load_packed(bad)
    assert time.perf_counter() - start < 10
    assert one_line(err.value)


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
@pytest.mark.parametrize("key", ["spec", "layers", "geometry"])
def test_deeply_nested_metadata_is_one_line(small_export, tmp_path, key, depth):
    header, data = raw_file(small_export)
    header["__metadata__"][key] = "[" * depth + "]" * depth
    bad = write_raw(tmp_path / "deep.safetensors", header, data)
    with pytest.raises(PackedFileError, match="nested too deeply") as err:
        load_packed(bad)
    assert one_line(err.value)


def test_a_deeply_nested_safetensors_header_is_one_line(small_export, tmp_path):
    _, data = raw_file(small_export)
    bad = write_raw(tmp_path / "deep.safetensors", b'{"a": ' + b"[" * 200_000 + b"]" * 200_000
                    + b"}", data)
    with pytest.raises(PackedFileError, match="nested too deeply"):
        load_packed(bad)


FLOAT_TENSOR = "layers.0.bias"  # a full-precision tensor of the MLP's first (float) layer


@pytest.mark.parametrize("dtype, name", [(torch.float64, "F64"), (torch.float16, "F16"),
                                         (torch.bfloat16, "BF16"), (torch.int32, "I32"),
                                         (torch.bool, "BOOL"), (torch.uint8, "U8")])
def test_a_float_tensor_of_another_dtype_is_one_line(small_export, tmp_path, dtype, name):
    from safetensors.torch import save_file

    from bnnbench.packed.reader import read_header, read_tensors

    header = read_header(small_export)
    tensors = read_tensors(small_export, header)
    key = next(k for k in tensors if k.endswith(".bias") and tensors[k].is_floating_point())
    tensors[key] = tensors[key].to(dtype)
    bad = tmp_path / "dtype.safetensors"
    save_file(tensors, str(bad), metadata=header.metadata)
    with pytest.raises(PackedFileError, match=f"tensor {key} is {dtype}, the model's is "
                                              "torch.float32") as err:
        load_packed(bad)
    assert one_line(err.value)


def test_bits_of_another_dtype_are_one_line(small_export, tmp_path):
    header, data = raw_file(small_export)
    key = next(k for k in header if k.endswith(".weight.bits"))
    header[key]["dtype"] = "I8"
    bad = write_raw(tmp_path / "bits.safetensors", header, data)
    with pytest.raises(BnnbenchError, match="bits is torch.int8"):
        load_packed(bad)


def version_2(path: Path, out: Path, planes_bytes: int | None = None) -> Path:
    header, data = raw_file(path)
    header["__metadata__"]["format_version"] = "2"
    return write_raw(out, header, data)


def test_a_version_2_file_is_checked_before_its_planes_are_reordered(tmp_path, monkeypatch):
    """A file whose conv layer claims a huge shape is refused by the header checks (its bits
    do not hold that many weights) before channels_last_planes allocates anything."""
    from bnnbench.packed import format as packed_format

    header, data = raw_file(export(tmp_path, spec_of("bnn", hidden=16), SMALL)[1])
    layers = json.loads(header["__metadata__"]["layers"])
    name = min(layers)
    layers[name]["shape"] = [4096, 4096, 3, 3]
    header["__metadata__"]["layers"] = json.dumps(layers)
    header["__metadata__"]["format_version"] = "2"
    bad = write_raw(tmp_path / "v2.safetensors", header, data)
    reordered = []
    monkeypatch.setattr(packed_format, "channels_last_planes",
                        lambda *a: reordered.append(a) or a[0])
    with pytest.raises(BnnbenchError, match="its encoding needs torch.uint8"):
        load_packed(bad)
    assert reordered == []


def test_channels_last_planes_in_blocks_equals_the_whole_reorder():
    from bnnbench.packed.encoding import channels_last_planes, to_bit_order
    from bnnbench.packed.packing import pack_bits

    for shape in ([13, 5, 3, 3], [8, 32, 1, 1], [3, 7, 2, 5]):
        w = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        planes = torch.stack([pack_bits(w < 0), pack_bits(w > 0.5)])
        want = torch.stack([pack_bits(to_bit_order(w) < 0), pack_bits(to_bit_order(w) > 0.5)])
        for chunk in (1, 64, 1 << 16):
            assert torch.equal(channels_last_planes(planes, shape, chunk_bits=chunk), want)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:5], "not a safetensors file"),
    (lambda b: struct.pack("<Q", 2**62) + b[8:], "header length"),
    (lambda b: b[:-1], "truncated or padded"),
    (lambda b: b + b"\0", "truncated or padded"),
])
def test_damaged_files_are_one_line(small_export, tmp_path, mutate, message):
    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes(mutate(small_export.read_bytes()))
    with pytest.raises(PackedFileError, match=message) as err:
        load_packed(bad)
    assert one_line(err.value)


def test_overlapping_tensors_are_refused(small_export, tmp_path):
    header, data = raw_file(small_export)
    keys = sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])
    header[keys[1]]["data_offsets"] = list(header[keys[0]]["data_offsets"])
    header[keys[1]]["shape"] = header[keys[0]]["shape"]
    header[keys[1]]["dtype"] = header[keys[0]]["dtype"]
    with pytest.raises(PackedFileError, match="tile the data"):
        load_packed(write_raw(tmp_path / "overlap.safetensors", header, data))


# ------------------------------------------------------------------ 6. evaluate's data arguments
def test_evaluate_takes_how_data_is_read_from_the_user(small_export):
    from bnnbench.evaluate import resolve_data

    spec = json.loads(json.loads(json.dumps(raw_file(small_export)[0]))["__metadata__"]["spec"])
    spec["data"]["args"] = {"num_workers": 64, "batch_size": 7, "download": True, "seed": 3}
    resolved, _ = resolve_data(spec, None)
    assert resolved["data"]["args"] == {"seed": 3}
    resolved, _ = resolve_data(spec, {"num_workers": 1})
    assert resolved["data"]["args"] == {"seed": 3, "num_workers": 1}
    spec["data"]["args"] = {"num_samples": 600_000}
    with pytest.raises(BnnbenchError, match=r"data.num_samples=600000 images"):
        resolve_data(spec, None)
    resolved, _ = resolve_data(spec, {"num_samples": 300})
    assert resolved["data"]["args"] == {"num_samples": 300}


def test_version_2_planes_are_reordered_in_blocks_of_bounded_memory():
    """A version-2 conv layer's planes are put channels last a block of output channels at a
    time: no temporary grows with the layer (the whole-layer reorder unpacked every bit to a
    byte and packed through int32: 9x-32x the planes)."""
    from tests.test_packed_memory import _Allocations

    from bnnbench.packed.encoding import channels_last_planes

    shape = [256, 64, 3, 3]  # 147,456 weights: 18 KiB per plane
    planes = torch.randint(0, 256, (2, 147_456 // 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(7))
    with _Allocations() as allocs:
        channels_last_planes(planes, shape, chunk_bits=1 << 12)
    largest = max(n * d.itemsize for _, d, n in allocs.seen)
    assert largest <= 2 * 147_456 // 8  # the result itself; blocks of 8 channels: ~18 KiB each
