"""Property tests and the bounded fuzz target of the packed reader and the kernels' validators.

The packed reader, fed a real export with random bytes flipped, cut or appended, or with random
JSON in its header and metadata, either loads a model that runs (the untouched file: the
exported model's own outputs) or refuses with one BnnbenchError line; never another exception.
The kernels, fed random shapes, dtypes, word counts and conv arguments, either compute what the
float64 reference computes or refuse with one KernelInputError line.

CI runs these as they are: fixed ``max_examples``, no per-example deadline, derandomized (the
same examples every run), about 20 s together on one core. A longer fuzzing session:
``BNNBENCH_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_packed.py`` (random examples, that many per
test).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bnnbench.errors import BnnbenchError  # noqa: E402
from bnnbench.packed.format import load_packed, save_packed  # noqa: E402
from bnnbench.spec import build_net  # noqa: E402

K = pytest.importorskip("bnnbench.kernels")
from bnnbench.kernels import KernelInputError, cpu  # noqa: E402

GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 6}
SPEC = {"model": {"name": "mlp", "kwargs": {"hidden_features": 40, "depth": 2}},
        "method": {"name": "bnn", "knobs": {"fp_first": False}},
        "data": {"name": "synthetic", "args": {}}}
X = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
LONG = int(os.environ.get("BNNBENCH_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=LONG or 40, deadline=None, derandomize=not LONG, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
KERNEL_FUZZ = settings(FUZZ, max_examples=LONG or 150)


@lru_cache(maxsize=1)
def export_bytes() -> tuple[bytes, torch.Tensor]:
    """A tiny BinaryNet MLP export (fan-in 36 and 40: padded words, fused pairs) and the
    trained network's outputs on ``X``."""
    from bnnbench.bench import trained_like_batchnorm

    torch.manual_seed(0)
    net = trained_like_batchnorm(build_net(SPEC, GEOMETRY)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_packed(net, Path(tmp) / "net.safetensors", SPEC, GEOMETRY)
        blob = path.read_bytes()
    with torch.no_grad():
        return blob, net(X)


def load_or_refuse(blob: bytes) -> torch.Tensor | None:
    """The outputs of the model ``blob`` loads to (fused kernels and decoded weights alike),
    or None when it is refused with one line; any other exception fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        path.write_bytes(blob)
        try:
            models = [load_packed(path), load_packed(path, kernels="never", mmap=True)]
        except BnnbenchError as err:
            assert "\n" not in str(err) and len(str(err)) < 500, str(err)
            return None
        with torch.no_grad():
            out = [m(X) for m in models]
    assert out[0].shape == out[1].shape == (2, 10)
    return out[0]


def header_of(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def with_header(header: dict | bytes, data: bytes) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def test_the_untouched_export_loads_to_the_trained_model():
    blob, want = export_bytes()
    assert torch.equal(load_or_refuse(blob), want)


@FUZZ
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                min_size=1, max_size=6))
def test_flipped_bytes_load_or_are_one_line(flips):
    blob, want = export_bytes()
    data = bytearray(blob)
    for where, value in flips:
        data[int(where * len(data))] = value
    out = load_or_refuse(bytes(data))
    if bytes(data) == blob:
        assert torch.equal(out, want)


@FUZZ
@given(st.integers(0, 4096), st.binary(max_size=64))
def test_cut_or_extended_files_are_one_line(keep, tail):
    blob, _ = export_bytes()
    cut = blob[: min(keep, len(blob) - 1)] if keep < len(blob) else blob + tail
    if cut != blob:
        assert load_or_refuse(cut) is None


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@FUZZ
@given(st.sampled_from(["spec", "layers", "geometry", "format_version", "format"]),
       st.one_of(JSON.map(json.dumps), st.text(max_size=40)))
def test_random_metadata_is_one_line(key, text):
    blob, _ = export_bytes()
    header, data = header_of(blob)
    header["__metadata__"][key] = text
    load_or_refuse(with_header(header, data))


@FUZZ
@given(st.data())
def test_edited_metadata_fields_are_one_line(draw):
    """One value deep inside spec/layers/geometry replaced by random JSON."""
    blob, _ = export_bytes()
    header, data = header_of(blob)
    key = draw.draw(st.sampled_from(["spec", "layers", "geometry"]))
    value = json.loads(header["__metadata__"][key])
    node, path = value, []
    while isinstance(node, dict) and node:
        name = draw.draw(st.sampled_from(sorted(node)))
        path.append(name)
        if not isinstance(node[name], dict) or draw.draw(st.booleans()):
            node[name] = draw.draw(JSON)
            break
        node = node[name]
    header["__metadata__"][key] = json.dumps(value)
    load_or_refuse(with_header(header, data))


@FUZZ
@given(st.data())
def test_random_tensor_entries_are_one_line(draw):
    """A tensor's dtype, shape or offsets replaced (the safetensors header itself)."""
    blob, _ = export_bytes()
    header, data = header_of(blob)
    name = draw.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = draw.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
    header[name][field] = draw.draw(st.one_of(
        JSON, st.sampled_from(["F64", "F16", "BF16", "I32", "BOOL", "U8", "I8", "F8_E4M3"]),
        st.lists(st.integers(-3, 2**40), max_size=4)))
    load_or_refuse(with_header(header, data))


@FUZZ
@given(JSON)
def test_a_random_header_is_one_line(header):
    blob, _ = export_bytes()
    _, data = header_of(blob)
    assert load_or_refuse(with_header(json.dumps(header).encode(), data)) is None


# ------------------------------------------------------------------ the kernels' validators
def refused_or(call, want):
    """``call()`` equals ``want()`` (both computed), or ``call`` is refused with one line."""
    try:
        got = call()
    except KernelInputError as err:
        assert "\n" not in str(err) and len(str(err)) < 500, str(err)
        return False
    assert torch.equal(got, want())
    return True


SMALL = st.integers(1, 80)


@KERNEL_FUZZ
@given(m=st.integers(1, 4), n=st.integers(1, 5), ka=SMALL, kw=SMALL, k=st.integers(-2, 100),
       dtype=st.sampled_from([torch.int32, torch.int32, torch.int64, torch.float32]),
       pad_bit=st.booleans(), public=st.booleans())
def test_xnor_gemm_computes_or_refuses(m, n, ka, kw, k, dtype, pad_bit, public):
    """Random operands (own word counts, a wrong dtype, a set padding bit): the exact dot of
    their first k signs (reference: unpack, float64 matmul), or one line."""
    g = torch.Generator().manual_seed(m * 1000 + n * 100 + ka + kw)
    a = K.pack_signs(torch.randn(m, ka, generator=g)).to(dtype)
    w = K.pack_signs(torch.randn(n, kw, generator=g))
    if pad_bit and k % 32:
        w[:, -1] |= 1 << 31
    fn = K.xnor_gemm if public else cpu.xnor_gemm

    def want() -> torch.Tensor:
        ua = K.unpack_signs(a, k, backend="reference").double()
        uw = K.unpack_signs(w, k, backend="reference").double()
        return (ua @ uw.T).to(torch.int32)

    ok = refused_or(lambda: fn(a, w, k), want)
    words_match = a.shape[1] == w.shape[1] == (k + 31) // 32 if k >= 1 else False
    assert ok == (words_match and dtype == torch.int32
                  and not (pad_bits_set(a, k) or pad_bits_set(w, k)))


def pad_bits_set(words: torch.Tensor, k: int) -> bool:
    """Whether any bit at position >= k of the packed rows is 1 (positions past k are
    padding): the last word's value as unsigned, shifted right by k mod 32."""
    if k < 1 or k % 32 == 0:
        return False
    last = words[:, -1].to(torch.int64) & 0xFFFFFFFF
    return bool((last >> (k % 32)).any())


@KERNEL_FUZZ
@given(c=st.integers(1, 40), cw=st.integers(1, 40), hw=st.integers(1, 6), ks=st.integers(1, 3),
       stride=st.one_of(st.integers(-1, 3), st.floats(0.5, 2), st.just((1, 2)), st.just(2**63)),
       padding=st.one_of(st.integers(-1, 5), st.just((0, 1)), st.just("same"), st.just(10**5)),
       groups=st.sampled_from([1, 1, 2, 0]), public=st.booleans())
def test_binary_conv2d_computes_or_refuses(c, cw, hw, ks, stride, padding, groups, public):
    """Random channel counts, sizes, strides, paddings and groups: the zero-padded conv of the
    signs (reference: float conv2d of +-1 tensors), or one line."""
    # the packed weight's words do not state its channel count: one that fits x's words is
    # taken as x's (its padding bits zero, i.e. +1 there), so draw counts the words tell apart
    cg = c // max(groups, 1)
    hypothesis.assume(cw == cg or (cw + 31) // 32 != (cg + 31) // 32)
    g = torch.Generator().manual_seed(c * 100 + cw * 10 + hw)
    x = torch.randn(1, c, hw, hw, generator=g)
    w = torch.randn(4, cw, ks, ks, generator=g)
    wp = K.pack_conv_weight(w)

    def want() -> torch.Tensor:
        pm = (lambda t: torch.where(t < 0, -1.0, 1.0))
        pad = padding if isinstance(padding, (tuple, str)) else (padding, padding)
        return torch.nn.functional.conv2d(pm(x), pm(w), stride=stride, padding=pad,
                                          groups=groups)

    if public:
        refused_or(lambda: K.binary_conv2d(x, wp, stride=stride, padding=padding,
                                           groups=groups), want)
    elif not isinstance(padding, str):
        refused_or(lambda: cpu.binary_conv2d(x, wp, None, None, stride, padding, groups), want)
