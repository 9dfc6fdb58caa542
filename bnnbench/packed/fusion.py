"""BatchNorm -> sign folded into the packed kernels: a binary layer hands the next one bits.

In a BinaryNet network (``bnn``, the ``sign`` kernel route) two binary layers are joined by
``Linear/Conv -> BatchNorm -> htanh -> sign -> Linear/Conv``. The first layer's output is an
exact integer dot ``d`` in [-K, K] (K its fan-in), and everything between it and the next sign
is per channel, so ``sign(BN(d))`` is a per-channel predicate on d. Folded once, the producing
kernel writes the next layer's packed input bits in its epilogue
(:func:`bnnbench.kernels.xnor_gemm_signs`, :func:`bnnbench.kernels.binary_conv2d_signs`): no
float activation, no BatchNorm kernel, no pack kernel.

The fold. In real arithmetic, with ``s = gamma / sqrt(var + eps)``,
``BN(d) = s (d - mu) + beta >= 0`` iff ``d >= mu - beta / s`` when gamma > 0, iff
``d <= mu - beta / s`` when gamma < 0, and ``beta >= 0`` for every d when gamma = 0; the
next layer's sign is ``-1`` (bit 1) iff its input ``< 0`` (sign(0) = sign(-0.0) = +1, NaN
+1). The packed path must equal the *float* path bit for bit, and float rounding can move a
decision that sits within an ulp of a threshold, so the threshold is not computed from that
formula: :func:`sign_thresholds` runs the modules between the layers themselves, in the
activation dtype on the activation device, on every integer d in [-K, K] and reads the
threshold off the decisions. The result holds for every d the layer can produce, is exact by
construction (including ties at 0, ``-0.0``, gamma < 0 and gamma == 0 channels), and rounding
is monotone, so each channel's decisions are ``bit = (d < t) XOR f``: ``f = 0`` (gamma > 0,
bit 1 below t), ``f = 1`` (gamma < 0, bit 1 from t on), t = K + 1 for a constant channel.
A channel whose decisions are not of that form (impossible for BN/htanh/ReLU/PReLU, checked
anyway) leaves the pair unfused.

Which compositions fold (:func:`find_sign_chains` checks the traced dataflow, torch.fx):
the producer and the consumer are ``sign``-route layers (BinaryNet: unscaled sign weights,
deterministic sign inputs) of the same kind (linear -> linear, conv -> conv, groups 1, no
producer bias), and only single-use, per-channel, elementwise modules sit between them:
BatchNorm with running statistics, Hardtanh, ReLU, PReLU, Identity, Dropout (inference).
So BinaryNet's MLP hidden layers and the pairs inside a BasicBlock of ResNet-18
(``conv1 -> bn1 -> act1 -> conv2``) fuse. What does not: XNOR-Net / XNOR-Net++ / DoReFa /
ABC-Net / Bi-Real / ReActNet layers (their outputs are scaled by alpha, Gamma or K, or their
block is BN -> sign -> conv with the BatchNorm *before* the sign the next layer applies to a
residual sum), Tang's residual binarization (m planes with data-dependent alpha), any
residual add, pooling or scale layer between the two layers, a Flatten between a conv and a
linear layer (NCHW flattening order), grouped convs, shift-based BatchNorm, and the
full-precision first and last layers. The packed model is for inference: in training mode
(or with a BatchNorm in training mode) every fused layer runs its unfused forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.nn.layers import _QuantMixin

#: modules that may sit between two fused layers: per channel and elementwise (in eval mode)
PASS_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Hardtanh, nn.ReLU, nn.PReLU, nn.Identity,
              nn.Dropout)
#: candidate values evaluated per chunk (times the channel count) when folding
_CHUNK_ELEMENTS = 1 << 16  # 256 KiB of float32: a 1 << 20 chunk added ~18 MiB to ResNet-18's peak


def sign_thresholds(modules: list[nn.Module], k: int, channels: int, dtype: torch.dtype,
                    device: torch.device | str, conv: bool) -> tuple[Tensor, Tensor] | None:
    """Fold ``sign(modules(d))`` for every integer d in [-k, k] into int32 ``(threshold, flip)``
    with ``next layer's bit (1 = -1) = (d < threshold) XOR flip`` per channel, or None when a
    channel's decisions are not monotone in d.

    ``d`` is fed as the producing layer's output in ``dtype`` on ``device``: (values, channels)
    for a linear layer, (1, channels, values, 1) for a conv (the layout the real NCHW
    activation takes through a BatchNorm2d). The modules run in their current (eval) mode.
    """
    import numpy as np

    step = max(1, _CHUNK_ELEMENTS // max(channels, 1))
    # the bookkeeping is numpy's: its few small loops are resident already, where each torch op
    # faulted in its own code (~3 MiB of libtorch for ResNet-18's first forward)
    negatives = np.zeros(channels, dtype=np.int64)  # how many d give bit 1
    changes = np.zeros(channels, dtype=np.int64)    # decision flips between consecutive d
    first: Any = None
    prev: Any = None
    with torch.no_grad():
        for start in range(-k, k + 1, step):
            d = torch.arange(start, min(start + step, k + 1), device=device)
            y = d.to(dtype)[:, None].expand(-1, channels).contiguous()
            if conv:
                y = y.T.reshape(1, channels, -1, 1)
            for module in modules:
                y = module(y)
            neg = ((y.reshape(channels, -1).T if conv else y) < 0).cpu().numpy()  # (values, C)
            if first is None:
                first = neg[0].copy()
            else:
                changes += neg[0] != prev
            changes += np.count_nonzero(neg[1:] != neg[:-1], axis=0)
            negatives += np.count_nonzero(neg, axis=0)
            prev = neg[-1].copy()
    if (changes > 1).any():
        return None
    # one change at most: bit(d) = first for d < t, not first from t on (t = k + 1: no change),
    # so the count of bit-1 values places t
    threshold = np.where(first, negatives - k, k + 1 - negatives).astype(np.int32)
    flip = (~first).astype(np.int32)
    return torch.from_numpy(threshold).to(device), torch.from_numpy(flip).to(device)


@dataclass(eq=False)
class SignChain:
    """One fused pair: ``producer -> between... -> consumer`` (module names in the network)."""

    producer: str
    between: list[str]
    consumer: str
    k: int
    channels: int
    conv: bool
    modules: list[nn.Module] = field(default_factory=list, repr=False)
    #: (dtype, device) -> (threshold, flip) or None (not foldable), computed on first use
    folds: dict[tuple[torch.dtype, torch.device], Any] = field(default_factory=dict, repr=False)
    #: the activation dtype of the last fused call (the consumer's output dtype)
    dtype: torch.dtype = torch.float32

    def active(self) -> bool:
        return not any(m.training for m in self.modules)

    def fold(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor] | None:
        key = (dtype, device)
        if key not in self.folds:
            self.folds[key] = sign_thresholds(self.modules, self.k, self.channels, dtype,
                                              device, self.conv)
        return self.folds[key]


def _route(layer: nn.Module) -> str | None:
    from bnnbench.packed.routes import kernel_route

    return kernel_route(layer) if hasattr(layer, "xnor_weight") else None


def _fusable(layer: nn.Module, as_producer: bool) -> bool:
    if _route(layer) != "sign":
        return False
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return False
    return not (as_producer and layer.bias is not None)


def _passes(module: nn.Module) -> bool:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return module.track_running_stats and module.running_mean is not None
    return isinstance(module, PASS_TYPES)


class _LeafTracer(torch.fx.Tracer):
    """Layers and the modules between them stay leaves: only the dataflow is traced."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_QuantMixin, *PASS_TYPES)) or super().is_leaf_module(m, qualname)


def find_sign_chains(net: nn.Module) -> list[tuple[str, list[str], str]]:
    """(producer, modules between, consumer) for every pair that folds (see the module
    docstring); [] when the network's forward cannot be traced symbolically."""
    try:
        graph = _LeafTracer().trace(net)
    except Exception:  # noqa: BLE001 - an untraceable host simply gets no fusion
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        producer = net.get_submodule(node.target)
        if not _fusable(producer, as_producer=True):
            continue
        between, cur = [], node
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            if (user.op != "call_module" or calls[user.target] != 1 or user.kwargs
                    or tuple(user.args) != (cur,)):
                break
            module = net.get_submodule(user.target)
            if _fusable(module, as_producer=False):
                if isinstance(module, nn.Conv2d) == isinstance(producer, nn.Conv2d):
                    chains.append((node.target, between, user.target))
                break
            if not _passes(module):
                break
            between.append(user.target)
            cur = user
    return chains


def fuse_sign_chains(net: nn.Module) -> list[SignChain]:
    """Route every foldable pair (:func:`find_sign_chains`) of a network whose layers already
    run on the kernels (:func:`bnnbench.packed.routes.use_kernels`) through the fused kernels:
    the producer writes packed signs, the modules between pass them through, the consumer reads
    them. Returns the chains (none: the network is unchanged)."""
    chains = []
    for prod_name, between, cons_name in find_sign_chains(net):
        producer, consumer = net.get_submodule(prod_name), net.get_submodule(cons_name)
        conv = isinstance(producer, nn.Conv2d)
        shape = [int(d) for d in producer.weight_quantizer.meta["shape"]]
        k = shape[1] * (shape[2] * shape[3] if conv else 1)
        chain = SignChain(prod_name, between, cons_name, k, shape[0], conv,
                          [net.get_submodule(n) for n in between])
        producer._sign_out = chain
        consumer._sign_in = chain
        chains.append(chain)
        _fold_as_loaded(chain)
    for chain in chains:
        for layer in (net.get_submodule(chain.producer), net.get_submodule(chain.consumer)):
            layer.forward = _fused_forward.__get__(layer)  # type: ignore[method-assign]
        for module in chain.modules:
            module.forward = _passthrough(module.forward)  # type: ignore[method-assign]
    return chains


def _fold_as_loaded(chain: SignChain) -> None:
    """Fold a chain now, for the dtype and device its float modules hold (the first forward's,
    unless the model is cast or moved after loading; then that forward folds again). Folded in
    the first forward instead, the long-lived tables landed among that forward's freed
    activations, and every later forward's heap grew around them (ResNet-18 at 224 px: peak
    +4-8 MiB from the second forward on)."""
    tensors = [t for m in chain.modules for t in (*m.parameters(), *m.buffers())
               if t.is_floating_point()]
    if tensors and chain.active():
        chain.fold(tensors[0].dtype, tensors[0].device)


def _passthrough(forward):
    def run(x: Tensor) -> Tensor:
        return x if x.dtype == torch.int32 else forward(x)  # packed signs go straight through
    return run


def _fused_forward(self: nn.Module, x: Tensor) -> Tensor:
    """A ``sign``-route layer inside fused chains: reads packed signs from the chain before it
    (int32 input), writes packed signs for the chain after it when that chain is active and
    folds, else its float output exactly as the unfused route computes it."""
    from bnnbench.packed.routes import _kernels, check_input

    check_input(self, x)  # float input: the feature count (packed signs pass)
    K = _kernels()
    chain_in: SignChain | None = getattr(self, "_sign_in", None)
    chain_out: SignChain | None = getattr(self, "_sign_out", None)
    packed_in = x.dtype == torch.int32
    dtype = chain_in.dtype if packed_in and chain_in is not None else x.dtype
    conv = isinstance(self, nn.Conv2d)
    fold = None
    if chain_out is not None and chain_out.active() and not self.training:
        fold = chain_out.fold(dtype, x.device)
    if conv:
        c_in = self.in_channels if packed_in else None
        if fold is not None:
            chain_out.dtype = dtype
            return K.binary_conv2d_signs(x, self.xnor_weight, *fold, stride=self.stride,
                                         padding=self.padding, in_channels=c_in)
        return K.binary_conv2d(x, self.xnor_weight, None, self.bias, stride=self.stride,
                               padding=self.padding, groups=self.groups,
                               in_channels=c_in).to(dtype)
    k = self.in_features
    lead = x.shape[:-1]
    a = x.reshape(-1, x.shape[-1]) if packed_in else K.pack_signs(x.reshape(-1, k))
    if fold is not None:
        chain_out.dtype = dtype
        return K.xnor_gemm_signs(a, self.xnor_weight, k, *fold).reshape(*lead, -1)
    y = K.xnor_gemm(a, self.xnor_weight, k).to(dtype)
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*lead, -1)
