"""Packed export: a trained run as one small safetensors file, and the model loaded back from it.

File layout (safetensors: raw little-endian tensors + a JSON header; no pickle anywhere):

* Every tensor the deployed model stores (:func:`bnnbench.size.deployed_tensors`: parameters and
  persistent buffers, BatchNorm statistics, PReLU slopes, scale layers, activation-quantizer
  parameters), under its state_dict key, as it is (float32 stays float32).
* For each quantized layer ``L`` the deployed weight ``L.quantized_weight()`` (eval mode) instead of
  the latent real weight, decomposed *from its values* and verified bit-exact (the float32 bit
  patterns of the decoded weight equal those of ``quantized_weight()``; otherwise the export
  fails):

  - ``sign`` encoding, when every output channel holds values of one magnitude ``a_o``, i.e.
    ``W_q = a_o * s`` with ``s`` in {-1, +1} (BinaryNet ``a = 1``, XNOR/BWN ``a_o = mean|W_o|``,
    DoReFa 1-bit one ``a`` per tensor): ``L.weight.bits`` uint8 ``(1, ceil(n/8))``, the signs of
    the flattened weight, 8 per byte, least-significant bit first, bit 1 = negative (the
    convention of :mod:`bnnbench.kernels`); ``L.weight.scale`` float32 ``(O,)`` or ``(1,)``,
    absent when every ``a = 1``.
  - ``codebook`` encoding otherwise (ABC-Net ``sum_i alpha_i B_i``, DoReFa k-bit grid): the
    ``u <= 2^k`` distinct values (``k`` = the quantizer's ``precision``) per tensor, or per output
    channel when a tensor has more, in ``L.weight.codebook`` float32 ``(u,)`` or ``(O, u)``, and
    the index of each weight in it as ``k`` bit planes ``L.weight.bits`` uint8
    ``(k, ceil(n/8))``, same bit order. So ABC-Net's M bases cost M bit planes plus the ``u``
    values ``sum_i +-alpha_i`` that occur (``u = M + 1``: ABC's shifted bases are nested, so only
    M + 1 of the 2^M sign patterns occur; the paper stores M alphas), DoReFa's k-bit grid k
    planes plus at most ``2^k`` values.
  - ``quantizer`` encoding: a weight quantizer may define ``pack(w_q) -> dict[str, Tensor]`` and
    ``unpack(tensors, shape) -> Tensor`` to store its own factorization; tensors go under
    ``L.weight.<key>``. Used when present, verified the same way.

* Metadata (safetensors ``__metadata__``, strings): ``format`` = ``bnnbench-packed``,
  ``format_version`` (2), ``spec`` (JSON, :mod:`bnnbench.spec`: the model's registry name and
  kwargs, the method's registry name and knobs, the data's name and arguments; plain values
  only), the data ``geometry``, the per-layer ``layers`` encodings, ``source`` and the
  accounting's ``deployed_bytes``.

The file's size on disk is the ``deployed`` accounting of :mod:`bnnbench.size` plus the header
(and, per quantized layer, under one byte of bit padding per plane and the codebook values beyond
the quantizer's declared scales: one float for ABC-Net, ``<= 2^k`` for DoReFa k-bit).

Loading (:func:`load_packed`) treats the file as data: it validates every metadata field (no
``_target_`` anywhere, registered names, positive integer shapes that agree with the tensors,
``planes <= 32``, a sane geometry), checks on the meta device that the network the spec builds
holds exactly the file's tensors, and only then rebuilds it through the registries (model + the
method's ``convert``; nothing the file names is ever instantiated or imported), puts a
:class:`PackedWeight` in place of each quantized layer's weight quantizer
(the latent weight is dropped; ``quantized_weight()`` returns the decoded weight), and loads the
rest. Every layer's own ``forward`` runs unchanged, so predictions equal the trained model's. Where
a layer is plain BinaryNet (``QuantLinear``/``QuantConv2d``, sign inputs, unscaled sign weights)
and :mod:`bnnbench.kernels` is importable, the layer runs the packed XNOR-popcount kernels instead
(bit-exact: integer dot products).

CLI: ``python -m bnnbench.export run_dir=<dir> | ckpt_path=<file.ckpt> [checkpoint=last|best]
[out=<file or dir>]``, a Hydra app (``conf/export.yaml``: ``--help``, ``--cfg job``), writes
``<run_dir>/packed.safetensors`` (never overwriting: a taken name gets ``-1``, ``-2``...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError
from bnnbench.files import atomic_path
from bnnbench.nn.layers import QuantConv2d, QuantLinear, _QuantMixin
from bnnbench.nn.quantizers import Identity, Quantizer, SignQuantizer
from bnnbench.spec import (
    Spec,
    as_spec,
    build_net,
    check_geometry,
    check_plain,
    check_spec,
)
from bnnbench.trained import check_shapes, load_trained, resolve_source

FORMAT = "bnnbench-packed"
# 2: the network is a run spec (registry names + plain arguments); 1 held a Hydra config
FORMAT_VERSION = "2"
PACKED_FILE = "packed.safetensors"
REQUIRED_METADATA = ("spec", "geometry", "layers")
MAX_PLANES = 32  # a weight index has at most 32 bits (float32 values: at most 2^32 distinct)


# ---------------------------------------------------------------------------------- bits
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


def kernel_words_from_bits(bits: Tensor, shape: list[int], conv: bool,
                           chunk_bits: int = 1 << 20) -> Tensor:
    """The kernels' packed weight of a ``sign``-encoded layer, read from its stored bits.

    ``bits``: :func:`pack_bits` of the flattened weight's signs. Linear (out, in) -> (out,
    words over in); conv (OC, C/g, KH, KW) -> (OC, KH, KW, words over C/g). Rows are converted
    a chunk of about ``chunk_bits`` weights at a time, so the bool/uint8 temporaries stay a
    few MiB whatever the layer's size (no float copy of the weight, no layer-sized temporary).
    """
    rows, per_row = shape[0], math.prod(shape[1:])
    step = max(1, chunk_bits // max(per_row, 1))
    parts = []
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        first, last = r0 * per_row, r1 * per_row
        window = unpack_bits(bits[first // 8: (last + 7) // 8], last - first + first % 8)
        neg = window[first % 8:].reshape(r1 - r0, *shape[1:])
        parts.append(kernel_words(neg.permute(0, 2, 3, 1) if conv else neg))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def kernel_words(neg: Tensor) -> Tensor:
    """(..., K) bool (True = -1) -> (..., ceil(K/32)) int32 in :mod:`bnnbench.kernels`' packing
    (32 signs per word, least-significant bit first, zero padded), without a float copy."""
    k = neg.shape[-1]
    padded = torch.nn.functional.pad(neg.to(torch.uint8), (0, (-k) % 32))
    shifts = _SHIFTS.to(device=neg.device, dtype=torch.uint8)
    as_bytes = (padded.reshape(*neg.shape[:-1], -1, 8) << shifts).sum(-1, dtype=torch.uint8)
    return as_bytes.contiguous().view(torch.int32)  # little-endian: byte 0 holds bits 0-7


# ---------------------------------------------------------------------------------- encoding
_MAG = 0x7FFFFFFF


def _as_int(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous().view(torch.int32)


def _float_of(bits: Tensor) -> Tensor:
    return bits.contiguous().view(torch.float32)


def encode_weight(wq: Tensor, precision: int,
                  quantizer: Quantizer | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Decompose a deployed weight exactly: (layer metadata, tensors keyed by suffix)."""
    shape = list(wq.shape)
    if quantizer is not None and callable(getattr(quantizer, "pack", None)) \
            and callable(getattr(quantizer, "unpack", None)):
        tensors = {k: v.detach().contiguous().cpu() for k, v in quantizer.pack(wq).items()}
        return {"encoding": "quantizer", "shape": shape}, tensors
    out = shape[0]
    ints = _as_int(wq.cpu()).reshape(out, -1)
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
        return torch.where(neg, -a, a).reshape(shape)
    if enc == "codebook":
        codes = torch.zeros(n, dtype=torch.int64, device=bits.device)
        for p in range(int(meta["planes"])):
            codes |= unpack_bits(bits[p], n).to(torch.int64) << p
        book = tensors["codebook"].to(torch.float32)
        if n and int(codes.max()) >= book.shape[-1]:
            raise BnnbenchError(f"a packed weight indexes value {int(codes.max())} of a "
                                f"{book.shape[-1]}-value codebook: the file is corrupt")
        if meta["codebook"] == "tensor":
            return book[codes].reshape(shape)
        return torch.gather(book, 1, codes.reshape(out, -1)).reshape(shape)
    raise BnnbenchError(f"unknown weight encoding {enc!r} (file from a newer bnnbench?)")


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


# ---------------------------------------------------------------------------------- export
def packed_tensors(net: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors to write, per-layer encodings) for a network; quantized weights verified exact."""
    from bnnbench.size import deployed_tensors

    was_training = net.training
    net.eval()
    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    try:
        with torch.no_grad():
            for name, module, key, tensor, _ in deployed_tensors(net):
                full = f"{name}.{key}" if name else key
                if isinstance(module, _QuantMixin) and key == "weight" and module.weight_bits < 32:
                    q = module.weight_quantizer
                    wq = module.quantized_weight().detach().to(torch.float32).cpu()
                    meta, parts = encode_weight(wq, module.weight_bits, q)
                    back = decode_weight(meta, parts, q)
                    if not torch.equal(_as_int(back).reshape(-1), _as_int(wq).reshape(-1)):
                        raise BnnbenchError(f"{name}: the packed weight does not decode to "
                                            "quantized_weight() bit for bit (export bug)")
                    layers[name] = meta
                    for suffix, t in parts.items():
                        tensors[f"{full}.{suffix}"] = t
                else:
                    tensors[full] = tensor.detach().cpu().contiguous()
    finally:
        net.train(was_training)
    return tensors, layers


def save_packed(net: nn.Module, path: Path, spec: Spec, geometry: dict[str, int],
                source: str = "") -> Path:
    """Write ``net`` (a converted, trained network built from ``spec``, or from a composed
    config: :func:`bnnbench.spec.as_spec`) packed to ``path`` (atomically); returns the path."""
    from safetensors.torch import save_file

    from bnnbench import __version__
    from bnnbench.size import account

    spec = as_spec(spec)
    tensors, layers = packed_tensors(net)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bnnbench_version": __version__,
        "spec": json.dumps(spec),
        "geometry": json.dumps(check_geometry(geometry)),
        "layers": json.dumps(layers),
        "source": source,
        "deployed_bytes": str(account(net, "deployed").total_bytes),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def free_path(path: Path) -> Path:
    """``path`` if it does not exist, else ``stem-1.suffix``, ``stem-2.suffix``, ..."""
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-{i}{path.suffix}")).exists():
        i += 1
    return candidate


def export_run(run_dir: Path | None, out: Path | None = None, checkpoint: str = "last",
               ckpt_path: Path | None = None) -> Path:
    """Export a trained run to one safetensors file; returns its path (never overwrites).

    The weights: ``ckpt_path``, else ``<run_dir>/checkpoints/<checkpoint>.ckpt``. ``out``: a file
    or a directory (default: the run directory; a checkpoint outside any run: the current one).
    """
    run_dir, ckpt = resolve_source(run_dir, ckpt_path, checkpoint)
    net, spec, geometry = load_trained(run_dir, ckpt_path=ckpt)
    path = Path(out) if out is not None else (run_dir or Path.cwd()) / PACKED_FILE
    if path.is_dir():
        path = path / PACKED_FILE
    return save_packed(net, free_path(path), spec, geometry, source=str(ckpt))


# ---------------------------------------------------------------------------------- load
def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of a bnnbench export; BnnbenchError for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BnnbenchError(f"{path} does not exist (export a run with "
                            "`python -m bnnbench.export run_dir=<dir>`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise BnnbenchError(f"{path} is not a bnnbench export (not a safetensors file: "
                            f"{str(err).splitlines()[0][:80]})") from err
    if meta.get("format") != FORMAT:
        raise BnnbenchError(f"{path} is not a bnnbench export (a safetensors file without "
                            f"format={FORMAT} metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BnnbenchError(f"{path} has format version {meta.get('format_version')}; this "
                            f"bnnbench reads version {FORMAT_VERSION}")
    return meta


def load_packed(path: Path, device: str | torch.device = "cpu",
                kernels: str = "auto", cuda_graph: bool = False) -> nn.Module:
    """The packed inference model of an export (eval mode).

    The file is data: its metadata is validated (:func:`read_packed`) and the network rebuilt
    through the registries from the spec's names, after checking on the meta device that it holds
    exactly the file's tensors; nothing the file names is instantiated.

    ``kernels``: ``auto`` runs every layer :func:`kernel_route` accepts (BinaryNet bit-exact,
    XNOR-Net, Tang's residual binarization, binary-weight linear layers) on
    :mod:`bnnbench.kernels` when it is importable,
    ``never`` keeps every layer's own forward on decoded weights.

    ``cuda_graph``: wrap the model in :class:`CudaGraphed`, which captures its forward as one
    CUDA graph per input shape and replays it (a packed network is many small kernel launches
    with Python between them: the graph removes the Python and launch overhead). CUDA only.
    """
    if kernels not in ("auto", "never"):
        raise BnnbenchError(f"kernels={kernels!r} is not valid; choose auto or never")
    if cuda_graph and torch.device(device).type != "cuda":
        raise BnnbenchError(f"cuda_graph=True needs device='cuda' (CUDA graphs replay GPU work), "
                            f"got device={str(device)!r}; load on a GPU or drop cuda_graph")
    spec, geometry, layers, tensors = read_packed(path)
    check_shapes(spec, geometry, {k: tuple(t.shape) for k, t in tensors.items()
                                  if not _packed_key(k, layers)}, str(path),
                 packed={name: tuple(meta["shape"]) for name, meta in layers.items()})
    net = _build_empty(spec, geometry)
    for name, lmeta in layers.items():
        layer = net.get_submodule(name)
        prefix = f"{name}.weight."
        parts = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        packed = PackedWeight(lmeta, parts, layer.weight_quantizer)
        layer.weight_quantizer = packed
        layer.weight = None  # the latent weight is gone; quantized_weight() decodes
    net.load_state_dict(tensors, strict=False, assign=True)
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:  # a tensor the file does not hold (an export always holds them all)
        raise BnnbenchError(f"{path} holds no value for {left[0]!r}: the file is incomplete; "
                            "re-export the run")
    net = net.to(device).eval()
    if kernels == "auto":
        use_kernels(net)
    return CudaGraphed(net) if cuda_graph else net


GraphRun = Callable[[Tensor], Tensor]


def capture_cuda_graph(net: nn.Module, example: Tensor, warmup: int = 3) -> GraphRun:
    """Capture ``net(example)`` as a CUDA graph; returns ``run(x)``: copy x into the graph's
    input, replay, return a copy of its output (the next replay overwrites the graph's own).

    The warm-up calls run first on a side stream (as ``torch.cuda.graphs`` asks): Triton's
    autotuning, which launches and synchronizes, must not happen during the capture.
    """
    if example.device.type != "cuda":
        raise BnnbenchError(f"a CUDA graph needs CUDA inputs, got a tensor on {example.device}; "
                            "move the input to the model's GPU")
    static_in = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            net(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = net(static_in)

    def run(x: Tensor) -> Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    return run


class CudaGraphed(nn.Module):
    """A model whose forward replays a CUDA graph captured once per input shape (and dtype and
    device): the first call with a new shape captures (:func:`capture_cuda_graph`), later calls
    with that shape replay. Inference only (no autograd through the replay). Moving or casting
    the model (``.to``, ``.half``...) drops the captured graphs, since they hold the old tensors.
    ``capture`` replaces the capture function (tests use a fake that needs no GPU).
    """

    def __init__(self, net: nn.Module,
                 capture: Callable[[nn.Module, Tensor], GraphRun] = capture_cuda_graph) -> None:
        super().__init__()
        self.net = net
        self.capture = capture
        self.graphs: dict[tuple, GraphRun] = {}
        self.train(net.training)

    def forward(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        run = self.graphs.get(key)
        if run is None:
            run = self.graphs[key] = self.capture(self.net, x)
        return run(x)

    def _apply(self, fn, *args, **kwargs):  # .to() / .half() / .cuda(): the graphs are stale
        self.graphs.clear()
        return super()._apply(fn, *args, **kwargs)


def _build_empty(spec: Spec, geometry: dict[str, int]) -> nn.Module:
    """The spec's network with every parameter and buffer on the meta device (no storage):
    the file's tensors are assigned afterwards, so a packed model never holds a float copy of
    its weights. A network whose construction needs real tensors is built normally."""
    try:
        with torch.device("meta"):
            return build_net(spec, geometry)
    except (NotImplementedError, RuntimeError):  # e.g. an init that reads tensor values
        return build_net(spec, geometry)


def _packed_key(key: str, layers: dict[str, Any]) -> bool:
    name, _, _ = key.rpartition(".weight.")
    return bool(name) and name in layers


def read_packed(path: Path) -> tuple[Spec, dict[str, int], dict[str, Any], dict[str, Tensor]]:
    """(spec, geometry, per-layer encodings, tensors) of an export, every field validated: one
    BnnbenchError naming the field for anything a bnnbench export would not hold."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise BnnbenchError(f"{path} lacks the {missing[0]!r} metadata of a bnnbench export; "
                            "re-export the run with `python -m bnnbench.export`")
    fields = {}
    for key in REQUIRED_METADATA:
        try:
            fields[key] = json.loads(meta[key])
        except ValueError as err:
            raise BnnbenchError(f"{path}: metadata {key!r} is not valid JSON") from err
    spec = check_spec(fields["spec"], f"{path}: spec")
    geometry = check_geometry(fields["geometry"], f"{path}: geometry")
    layers = check_plain(fields["layers"], f"{path}: layers")
    if not isinstance(layers, dict):
        raise BnnbenchError(f"{path}: metadata 'layers' must map layer names to encodings")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise BnnbenchError(f"{path} is not a readable safetensors file "
                            f"({str(err).splitlines()[0][:80]})") from err
    for name, lmeta in layers.items():
        prefix = f"{name}.weight."
        parts = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        check_layer(lmeta, parts, f"{path}: layer {name}")
    return spec, geometry, layers, tensors


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


# ---------------------------------------------------------------------------------- kernels
def _kernels() -> Any | None:
    try:
        from bnnbench import kernels as K  # type: ignore[attr-defined]
    except ImportError:
        return None
    needed = ("pack_signs", "xnor_gemm", "binary_conv2d")
    return K if all(hasattr(K, n) for n in needed) else None


def kernel_route(layer: nn.Module) -> str | None:
    """Which packed-kernel forward a loaded layer can take (None: keep its own forward).

    Every route needs sign weights (``sign`` encoding, any scale) and, for convs, dilation 1:

    * ``"sign"``: BinaryNet, exact class QuantLinear/QuantConv2d with deterministic sign inputs
      and unscaled weights: integer dot products, bit-exact with the trained forward;
    * ``"xnor"``: XNOR-Net's XnorLinear/XnorConv2d (sign inputs, per-channel alpha, optional
      activation scale K): ``alpha_o * K * xnor_dot + b``;
    * ``"residual"``: Tang et al.'s m residual binarizations of the input (QuantLinear/
      QuantConv2d with a ResidualSignQuantizer): ``sum_i a_i xnor_dot(H_i, W)``, one
      ``multibit_xnor_gemm`` for a linear layer, m packed convolutions for a conv;
    * ``"binary_weight"``: BinaryConnect / BWN linear layers (float inputs):
      ``binary_weight_gemm`` (no kernel for a conv with float inputs: those keep their forward).
    * ``"own"``: a layer class that defines ``kernel_forward(x, kernels, packed, scale)``
      (Bi-Real Net / ReActNet sign x sign layers, XNOR-Net++'s Gamma-scaled ones,
      :mod:`bnnbench.nn.modern_layers`) computes its packed forward itself.

    The scaled routes equal the trained forward up to float rounding (the sums are taken in
    another order), the ``sign`` route exactly.
    """
    from bnnbench.nn.paper_layers import XnorConv2d, XnorLinear
    from bnnbench.nn.paper_quantizers import ResidualSignQuantizer

    q = getattr(layer, "weight_quantizer", None)
    iq = getattr(layer, "input_quantizer", None)
    if not (isinstance(q, PackedWeight) and q.meta["encoding"] == "sign"):
        return None
    if isinstance(layer, nn.Conv2d) and layer.dilation != (1, 1):
        return None
    if callable(getattr(layer, "kernel_forward", None)):
        return "own"  # the layer runs its sign x sign product on the kernels itself
    sign_inputs = type(iq) is SignQuantizer and not iq.stochastic
    if type(layer) in (XnorLinear, XnorConv2d) and sign_inputs:
        return "xnor"
    if type(layer) in (QuantLinear, QuantConv2d):
        if sign_inputs and q.meta.get("scale") == "none":
            return "sign"
        if type(iq) is ResidualSignQuantizer:
            return "residual"
        if type(iq) is Identity and type(layer) is QuantLinear:
            return "binary_weight"
    return None


def use_kernels(net: nn.Module) -> int:
    """Route every eligible layer (:func:`kernel_route`) through bnnbench.kernels; returns how
    many (0 without kernels)."""
    K = _kernels()
    if K is None:
        return 0
    count = 0
    for _, layer in list(net.named_modules()):
        route = kernel_route(layer)
        if route is None:
            continue
        q = layer.weight_quantizer
        shape = [int(d) for d in q.meta["shape"]]
        # W = a_o s: the stored bits are s (bit 1 = W < 0, as the kernels pack), a_o goes after
        # the dot; packed straight from the bits, never through a float weight
        packed = kernel_words_from_bits(q.bits[0], shape, conv=not isinstance(layer, QuantLinear))
        scale = None
        if q.meta.get("scale") != "none":
            scale = q.scale.to(torch.float32).reshape(-1).expand(shape[0]).contiguous()
        layer.register_buffer("xnor_weight", packed, persistent=False)
        layer.register_buffer("xnor_scale", scale, persistent=False)
        forwards = _LINEAR_FORWARDS if isinstance(layer, QuantLinear) else _CONV_FORWARDS
        layer.forward = forwards[route].__get__(layer)  # type: ignore[method-assign]
        count += 1
    return count


def _linear_rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _sign_linear(self: nn.Module, x: Tensor) -> Tensor:
    """BinaryNet: sign(x) W^T + b from packed signs, exact integer dot products."""
    K = _kernels()
    y = K.xnor_gemm(K.pack_signs(_linear_rows(x)), self.xnor_weight, x.shape[-1]).to(x.dtype)
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], -1)


def _xnor_linear(self: nn.Module, x: Tensor) -> Tensor:
    """XNOR-Net: alpha_o * K_m * xnor_dot(sign(x_m), sign(W_o)) + b, K_m = mean|x_m| (or 1)."""
    K = _kernels()
    rows = _linear_rows(x)
    k_scale = (rows.abs().mean(dim=-1) if self.activation_scale
               else rows.new_ones(rows.shape[0])).to(torch.float32)
    y = K.multibit_xnor_gemm(K.pack_signs(rows)[None], self.xnor_weight, k_scale[None],
                             rows.shape[-1], self.xnor_scale, self.bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def _binary_weight_linear(self: nn.Module, x: Tensor) -> Tensor:
    """BinaryConnect / BWN: x (alpha_o sign(W))^T + b on packed 1-bit weights."""
    return _kernels().binary_weight_gemm(x, self.xnor_weight, self.xnor_scale, self.bias)


def _residual_linear(self: nn.Module, x: Tensor) -> Tensor:
    """Tang: sum_i a_i xnor_dot(H_i, W) (* alpha_o) + b in one multibit_xnor_gemm launch."""
    from bnnbench.functional import residual_planes

    K = _kernels()
    iq = self.input_quantizer
    _, planes, alphas = residual_planes(x, iq.num_bits, iq.per_sample)
    rows = x.shape[:-1].numel()
    if iq.per_sample:  # one alpha per sample, repeated over the sample's rows
        alphas = alphas.reshape(iq.num_bits, x.shape[0], 1).expand(
            -1, -1, rows // max(x.shape[0], 1)).reshape(iq.num_bits, rows)
    else:
        alphas = alphas.reshape(iq.num_bits, 1).expand(-1, rows)
    packed = K.pack_signs(torch.stack([_linear_rows(h) for h in planes]))
    y = K.multibit_xnor_gemm(packed, self.xnor_weight, alphas.to(torch.float32).contiguous(),
                             x.shape[-1], self.xnor_scale, self.bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def _packed_conv(self: nn.Module, x: Tensor, scale: Tensor | None,
                 bias: Tensor | None) -> Tensor:
    return _kernels().binary_conv2d(x, self.xnor_weight, scale, bias, stride=self.stride,
                                    padding=self.padding, groups=self.groups)


def _sign_conv(self: nn.Module, x: Tensor) -> Tensor:
    """BinaryNet: conv(sign(x), W) + b, exact, zero padding as trained."""
    return _packed_conv(self, x, None, self.bias)


def _xnor_conv(self: nn.Module, x: Tensor) -> Tensor:
    """XNOR-Net: conv(sign(x), sign(W)) * alpha_o * K + b, K the box-filtered mean|x| map."""
    from bnnbench.functional import xnor_activation_scale

    y = _packed_conv(self, x, self.xnor_scale, None)
    if self.activation_scale:
        y = y * xnor_activation_scale(x, self.kernel_size, self.stride, self.padding)
    if self.bias is not None:
        y = y + self.bias.view(1, -1, 1, 1)
    return y


def _residual_conv(self: nn.Module, x: Tensor) -> Tensor:
    """Tang: sum_i a_i conv(H_i, sign(W)) (* alpha_o) + b, one packed conv per plane."""
    from bnnbench.functional import residual_planes

    iq = self.input_quantizer
    _, planes, alphas = residual_planes(x, iq.num_bits, iq.per_sample)
    y = None
    for h, a in zip(planes, alphas):
        term = _packed_conv(self, h, self.xnor_scale, None) * (
            a.view(-1, 1, 1, 1) if iq.per_sample else a)
        y = term if y is None else y + term
    if self.bias is not None:
        y = y + self.bias.view(1, -1, 1, 1)
    return y


def _own_forward(self: nn.Module, x: Tensor) -> Tensor:
    """The layer's own packed forward (its ``kernel_forward``) on the stored signs and scale."""
    return self.kernel_forward(x, _kernels(), self.xnor_weight, self.xnor_scale)


_LINEAR_FORWARDS = {"sign": _sign_linear, "xnor": _xnor_linear, "residual": _residual_linear,
                    "binary_weight": _binary_weight_linear, "own": _own_forward}
_CONV_FORWARDS = {"sign": _sign_conv, "xnor": _xnor_conv, "residual": _residual_conv,
                  "own": _own_forward}


# ---------------------------------------------------------------------------------- CLI
def export_config(cfg: Any) -> Path:
    """The Hydra app's job (conf/export.yaml): export, then compare the file with the accounting."""
    from bnnbench.cli import output_of
    from bnnbench.size import format_bytes

    path = export_run(cfg.run_dir, output_of(cfg), checkpoint=str(cfg.checkpoint),
                      ckpt_path=cfg.ckpt_path)
    meta = read_metadata(path)
    on_disk = path.stat().st_size
    accounted = int(meta["deployed_bytes"])
    print(f"wrote {path}: {format_bytes(on_disk)} ({on_disk:,} bytes) on disk; accounting "
          f"(deployed) {accounted:,} bytes; header and padding {on_disk - accounted:,} bytes")
    return path


def main() -> None:
    """``python -m bnnbench.export`` / ``bnnbench export``: a Hydra app on conf/export.yaml."""
    from bnnbench.cli import hydra_app

    hydra_app("export", export_config)()


if __name__ == "__main__":
    main()
