"""Bit packing: the one bit order of bnnbench's packed weights.

A stream of bits is stored 8 per byte, least-significant bit first (bit 1 = negative for signs).
Read as little-endian int32 it is exactly :func:`bnnbench.kernels.pack_signs` of the same values,
so the kernels' packed weight words are built from stored bits without a float copy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_SHIFTS = torch.arange(8, dtype=torch.int32)


def pack_bits(bits: Tensor) -> Tensor:
    """Flattened bool/0-1 tensor -> uint8 ``(ceil(n/8),)``, 8 per byte, least-significant first.

    The one bit order of bnnbench: this stream read as little-endian int32 is exactly
    ``kernels.pack_signs`` of the same flattened values (bit 1 = negative, LSB first), which
    is how the packed routes build kernel words from stored bits without a float copy.
    """
    flat = bits.reshape(-1).to(torch.int32)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8)).view(-1, 8)
    return (flat << _SHIFTS.to(flat.device)).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``(n,)`` bool (uint8 arithmetic: one byte per bit in flight,
    not four)."""
    shifts = _SHIFTS.to(device=packed.device, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:n].bool()


def kernel_words_from_bits(bits: Tensor, shape: list[int], chunk_bits: int = 1 << 16) -> Tensor:
    """The kernels' packed weight of a ``sign``-encoded layer, read from its stored bits.

    ``bits``: :func:`pack_bits` of the weight's signs in the stored order
    (:func:`bnnbench.packed.encoding.to_bit_order`: a linear (out, in) row-major, a conv
    (OC, C/g, KH, KW) channels last, (OC, KH, KW, C/g)). Linear -> (out, words over in); conv ->
    (OC, KH, KW, words over C/g).

    Where the fan-in (in, or C/g) is a multiple of 32 each row of 32 bits is a whole
    little-endian word, so the stored bytes *are* the kernels' words: the result is ``bits``
    viewed as int32, no copy, sharing the file's storage. Otherwise the rows are padded to whole
    words in one preallocated tensor, a chunk of about ``chunk_bits`` weights at a time, so the
    uint8/bool temporaries stay a few hundred KiB whatever the layer's size (no float copy of
    the weight, no layer-sized temporary).
    """
    rows, fan_in, per_row = shape[0], shape[1], math.prod(shape[1:])
    words = (fan_in + 31) // 32
    if fan_in % 32 == 0 and bits.is_contiguous() and bits.data_ptr() % 4 == 0:
        return bits.reshape(-1)[: rows * per_row // 8].view(torch.int32).view(
            rows, *shape[2:], words)
    out = torch.empty((rows, *shape[2:], words), dtype=torch.int32, device=bits.device)
    step = max(1, chunk_bits // max(per_row, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        first, last = r0 * per_row, r1 * per_row
        window = unpack_bits(bits[first // 8: (last + 7) // 8], last - first + first % 8)
        neg = window[first % 8:].reshape(r1 - r0, *shape[2:], fan_in)  # stored channels last
        out[r0:r1] = kernel_words(neg)
    return out


def kernel_words(neg: Tensor) -> Tensor:
    """(..., K) bool (True = -1) -> (..., ceil(K/32)) int32 in :mod:`bnnbench.kernels`' packing
    (32 signs per word, least-significant bit first, zero padded), without a float copy."""
    k = neg.shape[-1]
    padded = torch.nn.functional.pad(neg.to(torch.uint8), (0, (-k) % 32))
    shifts = _SHIFTS.to(device=neg.device, dtype=torch.uint8)
    as_bytes = (padded.reshape(*neg.shape[:-1], -1, 8) << shifts).sum(-1, dtype=torch.uint8)
    return as_bytes.contiguous().view(torch.int32)  # little-endian: byte 0 holds bits 0-7

