"""A safetensors file read as untrusted data: the header checked whole before any tensor exists.

Layout (the safetensors format): an 8-byte little-endian header length ``H``, ``H`` bytes of
JSON ``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}, ...}``,
then the tensor bytes, ``[b, e)`` relative to the end of the header. :func:`read_header`
accepts a file only when

* ``H <= MAX_HEADER_BYTES`` and the header is UTF-8 JSON nested at most :data:`MAX_JSON_DEPTH`
  deep (a deeper one is refused, never a RecursionError);
* every tensor has a known dtype, a shape of at most :data:`MAX_DIMS` non-negative ints and
  ``e - b = prod(shape) * itemsize``, and the tensors tile the data section exactly (sorted by
  ``b``: no gap, no overlap, ending at the end of the file).

So every size a file states is bounded by its own length: the tensors it holds take exactly its
data bytes. :func:`read_tensors` then reads them into fresh memory (the loaded model never
depends on the file staying unchanged: truncating or overwriting it afterwards changes nothing),
or, with ``mmap=True``, maps them (no copy; the file must then stay unchanged while the tensors
live: a truncated file is a SIGBUS on the next access).

Every refusal is one :class:`PackedFileError` line naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnnbench.errors import BnnbenchError

#: the largest header read (a bnnbench export's is a few KiB to a few hundred KiB)
MAX_HEADER_BYTES = 16 << 20
#: JSON nesting depth accepted anywhere in a file (a spec nests ~5 deep)
MAX_JSON_DEPTH = 64
#: dimensions of a stored tensor
MAX_DIMS = 8
#: safetensors dtype names -> torch dtypes (what a file may declare; what a layer accepts is
#: checked against the model)
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool}


class PackedFileError(BnnbenchError):
    """A packed file that is not what a bnnbench export writes: one line naming the file and
    what is wrong with it."""


@dataclass(frozen=True)
class Entry:
    """One stored tensor: dtype, shape and its byte range ``[begin, end)`` in the data."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    def meta(self) -> Tensor:
        """A storage-less stand-in (shape and dtype only) for checks before any read."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


@dataclass(frozen=True)
class Header:
    """A validated header: the string metadata, the tensors, where their bytes start."""

    metadata: dict[str, str]
    entries: dict[str, Entry]
    data_start: int
    size: int


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, level + 1)
            stack.extend((v, level + 1) for v in item)
    return depth


def load_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` for untrusted text: invalid, or nested over :data:`MAX_JSON_DEPTH`, is one
    :class:`PackedFileError` line naming ``where`` (never a RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise PackedFileError(f"{where} is nested too deeply (over {MAX_JSON_DEPTH} levels)") \
            from None
    except ValueError as err:  # includes UnicodeDecodeError and ints past Python's digit limit
        raise PackedFileError(f"{where} is not valid JSON ({str(err).splitlines()[0][:80]})") \
            from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise PackedFileError(f"{where} is nested too deeply (over {MAX_JSON_DEPTH} levels)")
    return value


def _int(value: Any) -> bool:
    return type(value) is int and value >= 0


def _entry(name: str, raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise PackedFileError(f"{where}: tensor {name[:80]!r} must hold exactly dtype, shape and "
                              "data_offsets")
    dtype = DTYPES.get(raw["dtype"]) if isinstance(raw["dtype"], str) else None
    if dtype is None:
        raise PackedFileError(f"{where}: tensor {name[:80]!r} has dtype {str(raw['dtype'])[:20]!r}"
                              f"; a bnnbench export holds {', '.join(DTYPES)} only")
    shape, offsets = raw["shape"], raw["data_offsets"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(map(_int, shape)):
        raise PackedFileError(f"{where}: tensor {name[:80]!r} has shape {str(shape)[:60]}; need "
                              f"a list of at most {MAX_DIMS} non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_int, offsets))
            and offsets[0] <= offsets[1]):
        raise PackedFileError(f"{where}: tensor {name[:80]!r} has data_offsets "
                              f"{str(offsets)[:60]}; need [begin, end], 0 <= begin <= end")
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise PackedFileError(f"{where}: tensor {name[:80]!r} spans {offsets[1] - offsets[0]} "
                              f"bytes but its shape and dtype take {nbytes}")
    return Entry(dtype, tuple(shape), offsets[0], offsets[1])


def read_header(path: Path) -> Header:
    """The validated header of a safetensors file (see the module docstring); reads no tensor."""
    path = Path(path)
    where = str(path)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if length is None or length > min(MAX_HEADER_BYTES, size - 8):
                raise PackedFileError(
                    f"{where} is not a bnnbench export (not a safetensors file: header length "
                    f"{length} for a {size}-byte file, at most {MAX_HEADER_BYTES} accepted)")
            raw = fh.read(length)
    except OSError as err:
        raise PackedFileError(f"{where} cannot be read ({err.strerror or err})") from None
    if len(raw) != length:
        raise PackedFileError(f"{where} changed while it was read (header cut short)")
    header = load_json(raw, f"{where}: the safetensors header")
    if not isinstance(header, dict):
        raise PackedFileError(f"{where} is not a bnnbench export (its header is not a JSON "
                              "object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise PackedFileError(f"{where}: __metadata__ must map strings to strings")
    entries = {name: _entry(name, raw_entry, where) for name, raw_entry in header.items()}
    data_start = 8 + length
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != end:
            raise PackedFileError(f"{where}: tensor {name[:80]!r} starts at byte {entry.begin} "
                                  f"of the data, not at {end} (tensors must tile the data)")
        end = entry.end
    if data_start + end != size:
        raise PackedFileError(f"{where} holds {size - data_start} data bytes but its tensors "
                              f"take {end} (truncated or padded file)")
    return Header(metadata, entries, data_start, size)


def read_tensors(path: Path, header: Header, mmap: bool = False) -> dict[str, Tensor]:
    """The file's tensors (CPU), checked against ``header`` (read by :func:`read_header`).

    Default: each read into its own fresh tensor (``readinto``, no intermediate buffer: the
    tensors take the data bytes once). ``mmap=True``: safetensors' memory-mapped tensors,
    which share the file's pages and depend on it staying unchanged.
    """
    path = Path(path)
    if mmap:
        return _mapped(path, header)
    tensors: dict[str, Tensor] = {}
    try:
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size != header.size:
                raise PackedFileError(f"{path} changed size while it was read; load it again")
            for name, entry in sorted(header.entries.items(), key=lambda item: item[1].begin):
                t = torch.empty(entry.shape, dtype=entry.dtype)
                nbytes = entry.end - entry.begin
                if nbytes:
                    fh.seek(header.data_start + entry.begin)
                    if fh.readinto(t.reshape(-1).view(torch.uint8).numpy()) != nbytes:
                        raise PackedFileError(f"{path} changed while it was read (tensor "
                                              f"{name[:80]!r} cut short); load it again")
                tensors[name] = t
    except OSError as err:
        raise PackedFileError(f"{path} cannot be read ({err.strerror or err})") from None
    return tensors


def _mapped(path: Path, header: Header) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - the file changed after its header was checked
        raise PackedFileError(f"{path} is not a readable safetensors file "
                              f"({str(err).splitlines()[0][:80]})") from None
    if {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()} != {
            k: (e.dtype, e.shape) for k, e in header.entries.items()}:
        raise PackedFileError(f"{path} changed while it was read; load it again")
    return tensors
