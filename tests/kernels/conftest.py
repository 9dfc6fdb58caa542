"""Kernel tests run the Triton kernels in the CPU interpreter: TRITON_INTERPRET must be set
before Triton defines them (bnnbench.kernels imports its Triton module lazily, on first use)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


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

#: Triton is exercised on CPU only through the interpreter; on a CUDA machine use the GPU.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_TRITON_PATH = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
