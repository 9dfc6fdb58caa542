"""Helpers shared by the kernel tests."""

from __future__ import annotations

import torch

#: where the Triton kernels run in the tests: the GPU if there is one, else the interpreter.
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tdev(*tensors):
    """Move tensors (None passes through) to :data:`TRITON_DEVICE`."""
    out = tuple(None if t is None else t.to(TRITON_DEVICE) for t in tensors)
    return out[0] if len(out) == 1 else out


def rand_signs_source(shape, *, zeros: bool = True, seed: int = 0, dtype=torch.float32):
    """Gaussian values with some exact zeros (sign(0) = +1 must be honoured) and some -0.0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if zeros and x.numel() > 2:
        flat = x.view(-1)
        idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 10)]
        flat[idx[::2]] = 0.0
        flat[idx[1::2]] = -0.0
    return x.to(dtype)


def sign(x: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Independent sign with sign(0) = +1 (also for -0.0)."""
    return torch.where(x < 0, torch.tensor(-1.0, dtype=dtype), torch.tensor(1.0, dtype=dtype))


def fp_bound(x: torch.Tensor, ref: torch.Tensor, scale, dtype) -> torch.Tensor:
    """Error bound of sum_k x_k (+-1) in ``dtype``, scaled: c eps (sum|x| |s| + |ref|)."""
    eps = torch.finfo(dtype).eps
    s = 1.0 if scale is None else scale.abs().double()
    mag = x.double().abs().sum(-1, keepdim=True) * s
    return 8 * eps * (mag + ref.abs()) + 1e-6
