"""Importing FFCV (the ``ffcv`` extra) with a one-line error when it is missing."""

from __future__ import annotations

from types import ModuleType

from bnnbench.errors import BnnbenchError

INSTALL_HINT = ("install the ffcv extra: apt-get install -y pkg-config libopencv-dev "
                "libturbojpeg0-dev && pip install -e '.[ffcv]'")


def import_ffcv() -> ModuleType:
    """``import ffcv`` or raise BnnbenchError saying how to install it (one line)."""
    try:
        import ffcv
    except (ImportError, OSError) as err:  # not installed, or a shared library is missing
        raise BnnbenchError(f"FFCV is not importable ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); {INSTALL_HINT}"
                            ) from None
    return ffcv
