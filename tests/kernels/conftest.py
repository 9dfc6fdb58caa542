"""Kernel tests. Without CUDA the Triton kernels run in the CPU interpreter: TRITON_INTERPRET
must be set before Triton defines them (bnnbench.kernels imports its Triton module lazily, on
first use). With CUDA they run on the GPU (tensors moved by ``_util.tdev``)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # CPU-only: Triton kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
