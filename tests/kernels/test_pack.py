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
