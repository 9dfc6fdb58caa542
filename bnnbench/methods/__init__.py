"""Binarization methods: one module per paper, registered by name (= conf/method/<name>.yaml).

Each method module is imported here explicitly so that the registry is complete on import.
"""

from bnnbench.methods import abcnet, binaryconnect, bnn, dorefa, fp, tang, xnor  # noqa: F401
from bnnbench.methods import bireal, reactnet, xnorpp  # noqa: F401
from bnnbench.methods.base import (
    BinarizationMethod,
    create_method,
    get_method_class,
    list_methods,
    register_method,
)

__all__ = [
    "BinarizationMethod",
    "create_method",
    "get_method_class",
    "list_methods",
    "register_method",
]
