"""Architectures (full precision); methods binarize them. See :mod:`bnnbench.models.registry`."""

from bnnbench.models import alexnet, mlp, nin, reactnet_a, resnet, vgg_small  # noqa: F401
from bnnbench.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
