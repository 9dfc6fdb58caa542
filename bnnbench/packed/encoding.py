"""A deployed weight decomposed exactly into bits (``sign``, ``codebook`` or the quantizer's own
``quantizer`` encoding; the layout is in :mod:`bnnbench.packed.format`), its inverse, the checks
a file's encodings must pass, and :class:`PackedWeight`, which a loaded layer decodes through."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bnnbench.errors import BnnbenchError
from bnnbench.nn.quantizers import Quantizer
from bnnbench.packed.packing import pack_bits, unpack_bits

MAX_PLANES = 32  # a weight index has at most 32 bits (float32 values: at most 2^32 distinct)
_MAG = 0x7FFFFFFF


def _as_int(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous().view(torch.int32)


def _float_of(bits: Tensor) -> Tensor:
    return bits.contiguous().view(torch.float32)


def to_bit_order(w: Tensor) -> Tensor:
    """A weight in the order its bits are stored: a conv weight (O, C/g, *kernel) channels last,
    (O, *kernel, C/g), the kernels' layout (so a loaded conv's bits are its kernel words); a
    linear weight (O, I) as it is."""
    return w.movedim(1, -1) if w.dim() >= 3 else w


def from_bit_order(stored: Tensor, shape: list[int]) -> Tensor:
    """Inverse of :func:`to_bit_order`: the stored-order values of a ``shape`` weight, any
    shape with ``prod(shape)`` elements, as a contiguous ``shape`` tensor."""
    if len(shape) >= 3:
        return stored.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()
    return stored.reshape(shape)


def channels_last_planes(planes: Tensor, shape: list[int], chunk_bits: int = 1 << 16) -> Tensor:
    """Bit planes of a conv weight stored in its (O, C/g, *kernel) order (format version 2)
    rewritten in :func:`to_bit_order`'s order (version 3); other weights unchanged.

    A block of output channels at a time (a multiple of 8, so each block starts on a byte;
    about ``chunk_bits`` weights): the temporaries stay a few hundred KiB whatever the layer's
    size, the result is the one new tensor the planes' size."""
    if len(shape) < 3:
        return planes
    rows, per_row = shape[0], math.prod(shape[1:])
    out = torch.zeros_like(planes)
    step = 8 * max(1, chunk_bits // (8 * per_row))
    for p in range(planes.shape[0]):
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            first, count = r0 * per_row // 8, (r1 - r0) * per_row
            block = unpack_bits(planes[p, first: first + (count + 7) // 8], count)
            packed = pack_bits(to_bit_order(block.reshape(r1 - r0, *shape[1:])))
            out[p, first: first + packed.numel()] = packed
    return out


def encode_weight(wq: Tensor, precision: int,
                  quantizer: Quantizer | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Decompose a deployed weight exactly: (layer metadata, tensors keyed by suffix)."""
    shape = list(wq.shape)
    if quantizer is not None and callable(getattr(quantizer, "pack", None)) \
            and callable(getattr(quantizer, "unpack", None)):
        tensors = {k: v.detach().contiguous().cpu() for k, v in quantizer.pack(wq).items()}
        return {"encoding": "quantizer", "shape": shape}, tensors
    out = shape[0]
    ints = _as_int(to_bit_order(wq.cpu())).reshape(out, -1)  # rows = output channels
    mag = ints & _MAG
    a = mag[:, :1]
    if torch.equal(mag, a.expand_as(mag)):  # one magnitude per channel: a_o * sign
        meta: dict[str, Any] = {"encoding": "sign", "shape": shape, "planes": 1}
        tensors = {"bits": pack_bits(ints < 0).unsqueeze(0)}
        scale = _float_of(a.reshape(-1))
        if torch.all(scale == 1.0):
            meta["scale"] = "none"
        elif torch.equal(a, a[:1].expand_as(a)):
            meta["scale"] = "tensor"
            tensors["scale"] = scale[:1].clone()
        else:
            meta["scale"] = "channel"
            tensors["scale"] = scale.clone()
        return meta, tensors
    limit = 2 ** max(1, int(precision))
    uniq = torch.unique(ints)
    planes = max(1, int(precision))  # the declared bits: what the accounting counts
    if uniq.numel() <= limit:
        codes = torch.searchsorted(uniq, ints.reshape(-1))
        book = _float_of(uniq)
        meta = {"encoding": "codebook", "shape": shape, "planes": planes, "codebook": "tensor"}
    else:
        rows = [torch.unique(r) for r in ints]
        width = max(r.numel() for r in rows)
        if width > limit:
            raise BnnbenchError(
                f"a quantized weight of shape {tuple(shape)} has {width} distinct values in one "
                f"output channel, more than its precision ({precision} bits) allows; give its "
                "quantizer pack()/unpack() methods or fix its precision")
        padded = torch.stack([torch.nn.functional.pad(r, (0, width - r.numel()),
                                                      value=int(r[-1])) for r in rows])
        codes = torch.searchsorted(padded, ints).reshape(-1)
        book = _float_of(padded)
        meta = {"encoding": "codebook", "shape": shape, "planes": planes, "codebook": "channel"}
    bits = torch.stack([pack_bits((codes >> p) & 1) for p in range(planes)])
    return meta, {"bits": bits, "codebook": book.clone()}


def decode_weight(meta: dict[str, Any], tensors: dict[str, Tensor],
                  quantizer: Quantizer | None = None) -> Tensor:
    """The float32 weight an encoding stores (bit-exact inverse of :func:`encode_weight`)."""
    shape = [int(s) for s in meta["shape"]]
    n = math.prod(shape)
    out = shape[0]
    enc = meta["encoding"]
    if enc == "quantizer":
        if quantizer is None or not callable(getattr(quantizer, "unpack", None)):
            raise BnnbenchError("the file stores a quantizer-packed weight but the layer's "
                                "quantizer has no unpack()")
        return quantizer.unpack(tensors, shape).reshape(shape)
    bits = tensors["bits"]
    if enc == "sign":
        neg = unpack_bits(bits[0], n).reshape(out, -1)
        if meta["scale"] == "none":
            a = torch.ones(out, 1, device=bits.device)
        else:
            a = tensors["scale"].to(torch.float32).reshape(-1, 1).expand(out, 1)
        return from_bit_order(torch.where(neg, -a, a), shape)
    if enc == "codebook":
        codes = torch.zeros(n, dtype=torch.int64, device=bits.device)
        for p in range(int(meta["planes"])):
            codes |= unpack_bits(bits[p], n).to(torch.int64) << p
        book = tensors["codebook"].to(torch.float32)
        if n and int(codes.max()) >= book.shape[-1]:
            raise BnnbenchError(f"a packed weight indexes value {int(codes.max())} of a "
                                f"{book.shape[-1]}-value codebook: the file is corrupt")
        if meta["codebook"] == "tensor":
            return from_bit_order(book[codes], shape)
        return from_bit_order(torch.gather(book, 1, codes.reshape(out, -1)), shape)
    raise BnnbenchError(f"unknown weight encoding {enc!r} (file from a newer bnnbench?)")


def encode_exact(name: str, wq: Tensor, precision: int,
                 quantizer: Quantizer | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """:func:`encode_weight`, verified: the encoding decodes to ``wq`` bit for bit (the float32
    bit patterns), else a BnnbenchError naming layer ``name``."""
    meta, parts = encode_weight(wq, precision, quantizer)
    back = decode_weight(meta, parts, quantizer)
    if not torch.equal(_as_int(back).reshape(-1), _as_int(wq).reshape(-1)):
        raise BnnbenchError(f"{name}: the packed weight does not decode to "
                            "quantized_weight() bit for bit (export bug)")
    return meta, parts

def check_layer(meta: Any, parts: dict[str, Tensor], where: str) -> None:
    """A packed layer's encoding agrees with its tensors (shapes, dtypes, plane counts)."""
    if not isinstance(meta, dict) or meta.get("encoding") not in ("sign", "codebook",
                                                                  "quantizer"):
        raise BnnbenchError(f"{where}: encoding must be sign, codebook or quantizer")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 5 \
            or not all(type(d) is int and d >= 1 for d in shape):
        raise BnnbenchError(f"{where}: shape must be a list of 1 to 5 positive integers")
    if meta["encoding"] == "quantizer":
        return  # the layer's own quantizer unpacks (and checks) its factorization
    n, out = math.prod(shape), shape[0]
    planes = meta.get("planes")
    if type(planes) is not int or not 1 <= planes <= MAX_PLANES:
        raise BnnbenchError(f"{where}: planes must be an integer in 1..{MAX_PLANES}")
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "bits": ((planes, (n + 7) // 8), torch.uint8)}
    if meta["encoding"] == "sign":
        scale = meta.get("scale")
        if planes != 1 or scale not in ("none", "tensor", "channel"):
            raise BnnbenchError(f"{where}: a sign encoding has 1 plane and scale "
                                "none, tensor or channel")
        if scale != "none":
            expected["scale"] = ((1,) if scale == "tensor" else (out,), torch.float32)
    else:
        book = parts.get("codebook")
        kind = meta.get("codebook")
        if kind not in ("tensor", "channel") or book is None or book.dim() != (
                1 if kind == "tensor" else 2):
            raise BnnbenchError(f"{where}: a codebook encoding needs codebook tensor (u,) or "
                                "channel (O, u)")
        values = book.shape[-1]
        if not 1 <= values <= 2 ** planes:
            raise BnnbenchError(f"{where}: {values} codebook values do not fit {planes} planes")
        expected["codebook"] = ((values,) if kind == "tensor" else (out, values), torch.float32)
    if set(parts) != set(expected):
        raise BnnbenchError(f"{where}: stores {sorted(parts)}; its encoding needs "
                            f"{sorted(expected)}")
    for key, (want, dtype) in expected.items():
        if tuple(parts[key].shape) != want or parts[key].dtype != dtype:
            raise BnnbenchError(f"{where}: {key} is {parts[key].dtype} "
                                f"{tuple(parts[key].shape)}, its encoding needs {dtype} {want}")




class PackedWeight(Quantizer):
    """Stands in for a quantized layer's weight quantizer after loading: ignores its input and
    returns the decoded deployed weight (decoded once, then cached). Carries the original
    quantizer's ``precision`` and scale counts, so :mod:`bnnbench.size` still reads them."""

    def __init__(self, meta: dict[str, Any], tensors: dict[str, Tensor], original: Quantizer,
                 cache: bool = True) -> None:
        super().__init__()
        self.meta = meta
        self.precision = original.precision
        self.scales_per_channel = original.scales_per_channel
        self.scales_per_tensor = original.scales_per_tensor
        self.original = [original]  # a list: not a submodule (its tensors are not deployed)
        self.cache = cache
        for key, t in tensors.items():
            self.register_buffer(key, t)
        self.keys = list(tensors)
        self._decoded: Tensor | None = None

    def packed(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.keys}

    def decode(self) -> Tensor:
        return decode_weight(self.meta, self.packed(), self.original[0])

    def forward(self, _latent: Tensor | None = None) -> Tensor:
        if not self.cache:
            return self.decode()
        if self._decoded is None or self._decoded.device != self.bits_device():
            self._decoded = self.decode()
        return self._decoded

    def bits_device(self) -> torch.device:
        return getattr(self, self.keys[0]).device

    def extra_repr(self) -> str:
        enc = self.meta["encoding"]
        detail = {"sign": f"scale={self.meta.get('scale')}",
                  "codebook": f"planes={self.meta.get('planes')}, "
                              f"codebook={self.meta.get('codebook')}"}.get(enc, "")
        return f"{enc}, shape={tuple(self.meta['shape'])}, {detail}".rstrip(", ")


