"""Kernel tests. Without CUDA the Triton kernels run in the CPU interpreter: TRITON_INTERPRET
must be set before Triton defines them (bnnbench.kernels imports its Triton module lazily, on
first use). With CUDA they run on the GPU (tensors moved by ``_util.tdev``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # CPU-only: Triton kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _ensure_kernels_importable() -> None:
    """``bnnbench.kernels`` maps to the top-level ``kernels/`` dir via pyproject's package-dir.

    If the installed package does not expose it (an editable install made before the mapping
    took effect), load it from the source tree so that the tests still run the real code.
    """
    try:
        found = importlib.util.find_spec("bnnbench.kernels") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return
    import bnnbench

    root = Path(__file__).resolve().parents[2] / "kernels"
    spec = importlib.util.spec_from_file_location(
        "bnnbench.kernels", root / "__init__.py", submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bnnbench.kernels"] = mod
    spec.loader.exec_module(mod)
    bnnbench.kernels = mod


_ensure_kernels_importable()



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
