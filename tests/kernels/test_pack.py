"""pack_signs / unpack_signs: every backend against the reference and against the spec."""

from __future__ import annotations

import pytest
import torch

import bnnbench.kernels as K
from bnnbench.kernels import reference as R

from ._util import rand_signs_source, sign, tdev

BACKENDS = ["reference", "cpu", "triton"]
SHAPES_DIMS = [((1,), -1), ((31,), 0), ((3, 32), -1), ((5, 33), 1), ((2, 1031), -1),
               ((37, 3), 0), ((2, 3, 70), 1), ((4, 3, 65), -1)]


def test_reference_bit_layout():
    """Spec: 32 signs per int32 word, LSB first, bit 1 = -1 (x < 0), zero padded."""
    x = torch.ones(40)
    x[0] = -1.0          # bit 0 of word 0
    x[5] = -3.0          # bit 5
    x[31] = -0.5         # bit 31: the int32 sign bit
    x[33] = -2.0         # word 1, bit 1
    x[2] = 0.0           # sign(0) = +1 -> bit 0
    x[3] = -0.0          # -0.0 is not < 0 -> +1
    p = R.pack_signs_ref(x)
    assert p.dtype == torch.int32 and p.shape == (2,)
    assert int(p[0]) & 0xFFFFFFFF == (1 << 0) | (1 << 5) | (1 << 31)
    assert int(p[1]) == 1 << 1  # bits past 40 are zero padding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
def test_pack_matches_reference(backend, shape, dim):
    x = rand_signs_source(shape)
    got = K.pack_signs(tdev(x) if backend == "triton" else x, dim=dim, backend=backend).cpu()
    want = R.pack_signs_ref(x, dim=dim)
    assert got.dtype == torch.int32
    assert got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unpack_roundtrip(backend, shape, dim, dtype):
    x = rand_signs_source(shape)
    n = x.shape[dim]
    p = R.pack_signs_ref(x, dim=dim)
    if backend == "triton":
        p = tdev(p)
    got = K.unpack_signs(p, n, dim=dim, dtype=dtype, backend=backend).cpu()
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got.double(), sign(x))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_pack_half_inputs(backend):
    x = rand_signs_source((3, 45), dtype=torch.bfloat16)
    assert torch.equal(K.pack_signs(x, backend=backend), R.pack_signs_ref(x.float()))


def test_unpack_int8():
    x = rand_signs_source((4, 77))
    p = K.pack_signs(x)
    assert torch.equal(K.unpack_signs(p, 77, dtype=torch.int8).double(), sign(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_pack_special_values(dtype):
    """The compiled packing compares like ``x < 0`` in IEEE: -0.0 and NaN of either sign are
    +1, -inf and the smallest subnormals -1; one row per odd length (pad bytes zero)."""
    tiny = torch.finfo(dtype).tiny / 4 if dtype != torch.bfloat16 else 1e-40
    special = torch.tensor([-0.0, 0.0, float("nan"), -float("nan"), -float("inf"),
                            float("inf"), -tiny, tiny, -1.0, 1.0], dtype=torch.float32)
    for k in (1, 10, 31, 32, 33, 100):
        x = special.repeat(7 * k)[: 3 * k].reshape(3, k).to(dtype)
        got = K.pack_signs(x, backend="cpu")
        assert torch.equal(got, R.pack_signs_ref(x.float())), k
        assert torch.equal(got, R.pack_signs_ref(x)), k


def test_cpu_pack_views_grad_and_empty_rows():
    """Non-contiguous input, a tensor that requires grad, zero rows: as the reference."""
    x = rand_signs_source((6, 40, 3))
    assert torch.equal(K.pack_signs(x, dim=1, backend="cpu"), R.pack_signs_ref(x, dim=1))
    xt = x[:, :, 1].t()  # (40, 6) strided view
    assert torch.equal(K.pack_signs(xt, backend="cpu"), R.pack_signs_ref(xt.contiguous()))
    xg = x.clone().requires_grad_()
    got = K.pack_signs(xg, backend="cpu")
    assert not got.requires_grad and torch.equal(got, R.pack_signs_ref(x))
    assert K.pack_signs(torch.empty(0, 70), backend="cpu").shape == (0, 3)
