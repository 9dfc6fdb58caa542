"""Custom ops (fake impls, opcheck, torch.compile), backend dispatch, errors, autotune pruning."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import bnnbench.kernels as K
from bnnbench.kernels import KernelInputError
from bnnbench.kernels import reference as R

from ._util import rand_signs_source, tdev


def _args():
    x = rand_signs_source((3, 70))
    ap = R.pack_signs_ref(x)
    wp = R.pack_signs_ref(rand_signs_source((5, 70), seed=1))
    return x, ap, wp


OPCHECK = [
    ("pack_signs", lambda x, ap, wp: (x, "cpu")),
    ("unpack_signs", lambda x, ap, wp: (ap, 70, torch.float16, "cpu")),
    ("xnor_gemm", lambda x, ap, wp: (ap, wp, 70, "cpu")),
    ("binary_weight_gemm", lambda x, ap, wp: (x, wp, torch.rand(5), torch.randn(5), "cpu")),
    ("multibit_xnor_gemm",
     lambda x, ap, wp: (torch.stack([ap, ap]), wp, torch.rand(2, 3), 70, None, torch.randn(5),
                        "cpu")),
    ("binary_conv2d",
     lambda x, ap, wp: (torch.randn(2, 3, 5, 6), R.pack_conv_weight_ref(torch.randn(4, 3, 3, 3)),
                        torch.rand(4), None, [2, 1], [1, 0], 1, 0, "cpu")),
    ("binary_conv2d",  # packed NHWC input (N, H, W, ceil(C/32)) with in_channels = C
     lambda x, ap, wp: (R.pack_signs_ref(torch.randn(2, 5, 6, 40)),
                        R.pack_conv_weight_ref(torch.randn(4, 40, 3, 3)), None, torch.randn(4),
                        [2, 1], [1, 0], 1, 40, "cpu")),
    ("xnor_gemm_signs",
     lambda x, ap, wp: (ap, wp, 70, torch.arange(-2, 3, dtype=torch.int32),
                        torch.tensor([0, 1, 0, 1, 1], dtype=torch.int32), "cpu")),
    ("binary_conv2d_signs",
     lambda x, ap, wp: (torch.randn(2, 3, 5, 6), R.pack_conv_weight_ref(torch.randn(40, 3, 3, 3)),
                        torch.arange(-20, 20, dtype=torch.int32),
                        torch.zeros(40, dtype=torch.int32), [2, 1], [1, 0], 1, 0, "cpu")),
]


@pytest.mark.parametrize("name,make", OPCHECK,
                         ids=[f"{o[0]}{i}" for i, o in enumerate(OPCHECK)])
def test_opcheck(name, make):
    op = getattr(torch.ops.bnnbench, name).default
    torch.library.opcheck(op, make(*_args()))


def test_fake_tensor_shapes():
    with FakeTensorMode():
        x = torch.empty(4, 70)
        wp = torch.empty(6, 3, dtype=torch.int32)
        ap = K.pack_signs(x)
        assert ap.shape == (4, 3) and ap.dtype == torch.int32
        assert K.unpack_signs(ap, 70).shape == (4, 70)
        assert K.xnor_gemm(ap, wp, 70).shape == (4, 6)
        y = K.binary_weight_gemm(x.half(), wp, torch.empty(6))
        assert y.shape == (4, 6) and y.dtype == torch.float16
        planes = torch.empty(3, 4, 3, dtype=torch.int32)
        assert K.multibit_xnor_gemm(planes, wp, torch.empty(3), 70).shape == (4, 6)
        xc = torch.empty(2, 37, 9, 8)
        wc = torch.empty(5, 3, 3, 2, dtype=torch.int32)
        assert K.binary_conv2d(xc, wc, stride=2, padding=1).shape == (2, 5, 5, 4)


def test_meta_tensors_reference():
    x = torch.empty(4, 70, device="meta")
    wp = torch.empty(6, 3, dtype=torch.int32, device="meta")
    assert K.binary_weight_gemm(x, wp).shape == (4, 6)  # auto -> reference on meta


def test_torch_compile_fullgraph():
    x, ap, wp = _args()
    scale = torch.rand(5)

    def f(x, wp):
        y = K.binary_weight_gemm(x, wp, scale, backend="cpu")
        return y + K.xnor_gemm(K.pack_signs(x), wp, 70).to(y.dtype)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cf(x, wp), f(x, wp))


def test_auto_backend_on_cpu_uses_cpu_impl(monkeypatch):
    """CPU tensors never go to the interpreter unless backend='triton' is asked for."""
    from bnnbench.kernels import _common

    assert _common.resolve_backend("auto", torch.device("cpu"), "t") == "cpu"
    assert _common.resolve_backend("auto", torch.device("cuda"), "t") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelInputError, match="TRITON_INTERPRET=1"):
        _common.resolve_backend("triton", torch.device("cpu"), "t")
    with pytest.raises(KernelInputError, match="needs CPU tensors"):
        _common.resolve_backend("cpu", torch.device("cuda"), "t")
    with pytest.raises(KernelInputError, match="backend='gpu'"):
        K.pack_signs(torch.randn(3), backend="gpu")


@pytest.mark.parametrize("call,match", [
    (lambda x, ap, wp: K.xnor_gemm(ap.float(), wp, 70), "a_packed must be int32"),
    (lambda x, ap, wp: K.xnor_gemm(ap, wp, 100), "needs ceil"),
    (lambda x, ap, wp: K.xnor_gemm(ap, wp[:, :2], 70), "w_packed has 2 words"),
    (lambda x, ap, wp: K.binary_weight_gemm(x.double(), wp), "float16, bfloat16 or float32"),
    (lambda x, ap, wp: K.binary_weight_gemm(x, wp, torch.rand(4)), r"scale must have shape \(5,\)"),
    (lambda x, ap, wp: K.binary_weight_gemm(x, wp.to("meta")), "one device"),
    (lambda x, ap, wp: K.multibit_xnor_gemm(ap[None], wp, torch.rand(2), 70), "alpha must have"),
    (lambda x, ap, wp: K.unpack_signs(ap, 100), "needs ceil"),
    (lambda x, ap, wp: K.binary_conv2d(torch.randn(1, 6, 5, 5), wp.view(5, 1, 1, 3), groups=4),
     "must divide"),
    (lambda x, ap, wp: K.binary_conv2d(torch.randn(1, 6, 5, 5),
                                       R.pack_conv_weight_ref(torch.randn(4, 6, 3, 3)),
                                       dilation=2), "dilation"),
    (lambda x, ap, wp: K.binary_conv2d(torch.randn(1, 37, 5, 5),
                                       R.pack_conv_weight_ref(torch.randn(4, 6, 3, 3))),
     "pack_conv_weight"),
    (lambda x, ap, wp: K.binary_conv2d(torch.randn(1, 6, 2, 2),
                                       R.pack_conv_weight_ref(torch.randn(4, 6, 3, 3))),
     "larger than the padded input"),
])
def test_errors_are_one_clear_message(call, match):
    with pytest.raises(KernelInputError, match=match):
        call(*_args())


def test_launcher_checks_too():
    from bnnbench.kernels import triton_kernels as T

    x, ap, wp = _args()
    ap, wp = tdev(ap, wp)
    with pytest.raises(KernelInputError, match="path="):
        T.xnor_gemm(ap, wp, 70, path="fast")
    with pytest.raises(KernelInputError, match="int32"):
        T.xnor_gemm(ap.to(torch.int64), wp, 70)
    with pytest.raises(KernelInputError, match="w_packed has 2 words"):
        T.multibit_xnor_gemm(ap[None], wp[:, :2], torch.ones(1), 70)


def test_autotune_pruning_for_cuda(monkeypatch):
    """The CUDA config pruning (not used under the interpreter) keeps sane, non-empty sets."""
    from bnnbench.kernels import triton_kernels as T

    monkeypatch.setattr(T, "INTERPRET", False)
    monkeypatch.setattr(T, "_current_smem", lambda: 227 * 1024)  # H100
    pop = T._prune_popcount(T._popcount_configs(), {"M": 1})
    assert pop and all(c.kwargs["BLOCK_M"] == 1 for c in pop)
    pop = T._prune_popcount(T._popcount_configs(), {"M": 9})
    assert pop and all(c.kwargs["BLOCK_M"] == 16 for c in pop)
    dot_small = T._prune_dot(T._dot_configs(), {"M": 40})
    assert dot_small and all(c.kwargs["BLOCK_M"] <= 64 for c in dot_small)
    dot_big = T._prune_dot(T._dot_configs(), {"M": 8192})
    assert len(dot_big) == len(T._dot_configs())
    monkeypatch.setattr(T, "_current_smem", lambda: 48 * 1024)  # small-smem device
    assert len(T._prune_dot(T._dot_configs(), {"M": 8192})) < len(dot_big)
    bw = T._prune_bw(T._bw_configs(), {"M": 1, "x_ptr": torch.empty(1, dtype=torch.bfloat16)})
    assert bw and all(c.kwargs["BLOCK_M"] == 16 for c in bw)
    monkeypatch.setattr(T, "INTERPRET", True)
    assert len(T._prune_dot(T._dot_configs(), {"M": 8192})) == 1


def test_autotune_pruning_never_returns_nothing(monkeypatch):
    """A device with less shared memory than every config models still gets one config."""
    from bnnbench.kernels import triton_kernels as T

    monkeypatch.setattr(T, "INTERPRET", False)
    monkeypatch.setattr(T, "_current_smem", lambda: 1024)
    assert len(T._prune_popcount(T._popcount_configs(), {"M": 1})) == 1
    assert len(T._prune_dot(T._dot_configs(), {"M": 4096})) == 1


def test_smem_model_covers_the_epilogue_exchange():
    """The int32 accumulator of a 128x256 int8 tile is exchanged through 128 KiB of shared
    memory (what ptxas reports for that config); the model must not be below it."""
    from bnnbench.kernels import triton_kernels as T

    big = next(c for c in T._dot_configs() if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) ==
               (128, 256))
    assert T._smem_bytes(big, True) >= 128 * 256 * 4


def test_eager_cpu_calls_skip_the_custom_op(monkeypatch):
    """Eager CPU calls on plain tensors run the op's body directly (the dispatcher's Python
    layers cost more than a cold GEMV); a tensor that requires grad, a tensor subclass, a
    dispatch mode or another backend keeps the custom op in the path."""
    from bnnbench.kernels import cpu, ops
    from torch.utils._python_dispatch import TorchDispatchMode

    x, ap, wp = _args()
    direct: list[str] = []
    for name in ("pack_signs", "xnor_gemm"):
        body = getattr(cpu.UNCHECKED, name)
        monkeypatch.setattr(cpu.UNCHECKED, name,
                            lambda *a, _b=body, _n=name: direct.append(_n) or _b(*a))
    want = R.xnor_gemm_ref(ap, wp, 70)
    assert torch.equal(K.xnor_gemm(K.pack_signs(x), wp, 70), want)
    assert direct == ["pack_signs", "xnor_gemm"]
    assert torch.equal(K.xnor_gemm(ap.view(3, 1, -1), wp, 70), want.view(3, 1, -1))
    assert len(direct) == 3
    assert torch.equal(K.pack_signs(x.clone().requires_grad_()), ap)  # through the op
    assert torch.equal(K.xnor_gemm(ap, wp, 70, backend="reference"), want)
    assert len(direct) == 3

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        assert torch.equal(K.xnor_gemm(ap, wp, 70), want)
    assert len(direct) == 3
    assert not ops._direct_cpu("cpu", torch.nn.Parameter(x))  # a subclass
    assert ops._direct_cpu("cpu", ap, None, wp)
