"""The packed file: a trained network as one small safetensors file, and the model loaded back.

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
    the weight flattened in the stored order (a linear weight (O, I) row-major, a conv weight
    (O, C/g, KH, KW) channels last, i.e. as (O, KH, KW, C/g):
    :func:`~bnnbench.packed.encoding.to_bit_order`), 8 per byte, least-significant bit first,
    bit 1 = negative (the convention of :mod:`bnnbench.kernels`); ``L.weight.scale`` float32
    ``(O,)`` or ``(1,)``, absent when every ``a = 1``. That order is the kernels' weight
    layout: where a layer's fan-in (I or C/g) is a multiple of 32 the stored bytes, read as
    little-endian int32, are its kernel words, and the loaded model runs on them in place.
  - ``codebook`` encoding otherwise (ABC-Net ``sum_i alpha_i B_i``, DoReFa k-bit grid): the
    ``u <= 2^k`` distinct values (``k`` = the quantizer's ``precision``) per tensor, or per output
    channel when a tensor has more, in ``L.weight.codebook`` float32 ``(u,)`` or ``(O, u)``, and
    the index of each weight in it as ``k`` bit planes ``L.weight.bits`` uint8
    ``(k, ceil(n/8))``, same element and bit order. So ABC-Net's M bases cost M bit planes plus
    the ``u`` values ``sum_i +-alpha_i`` that occur (``u = M + 1``: ABC's shifted bases are
    nested, so only M + 1 of the 2^M sign patterns occur; the paper stores M alphas), DoReFa's
    k-bit grid k planes plus at most ``2^k`` values.
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

Loading (:func:`load_packed`) treats the file as data: it validates the safetensors header
(:mod:`bnnbench.packed.reader`: bounded size and nesting, known dtypes, tensors tiling the data)
and every metadata field (no ``_target_`` anywhere, registered model, method and data names,
positive integer shapes that agree with the tensors, ``planes <= 32``, a sane geometry), checks
on the meta device that the network the spec builds holds exactly the file's tensors (shapes and
dtypes; its construction stopped when it registers far more modules and tensors than the file
stores), and only then reads the tensors (into memory, or memory-mapped with ``mmap=True``) and
rebuilds the network through the registries (model + the
method's ``convert``; nothing the file names is ever instantiated or imported), puts a
:class:`PackedWeight` in place of each quantized layer's weight quantizer
(the latent weight is dropped; ``quantized_weight()`` returns the decoded weight), and loads the
rest. Every layer's own ``forward`` runs unchanged, so predictions equal the trained model's. Where
a layer is plain BinaryNet (``QuantLinear``/``QuantConv2d``, sign inputs, unscaled sign weights)
and :mod:`bnnbench.kernels` is importable, the layer runs the packed XNOR-popcount kernels instead
(bit-exact: integer dot products; the routes are :mod:`bnnbench.packed.routes`), and two such
layers joined by BatchNorm -> sign only exchange packed bits (:mod:`bnnbench.packed.fusion`).
Every packed layer checks its input's feature count, whatever its route
(:func:`bnnbench.packed.routes.check_input`): the kernels see only word counts.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError
from bnnbench.files import atomic_path
from bnnbench.nn.layers import _QuantMixin
from bnnbench.packed.cuda_graph import CudaGraphed
from bnnbench.packed.encoding import (PackedWeight, channels_last_planes, check_layer,
                                     encode_exact)
from bnnbench.packed.fusion import fuse_sign_chains
from bnnbench.packed.reader import Header, PackedFileError, load_json, read_header, read_tensors
from bnnbench.packed.routes import check_input_hook, use_kernels
from bnnbench.size import account, deployed_tensors
from bnnbench.spec import Spec, as_spec, build_net, check_geometry, check_plain, check_spec
from bnnbench.trained import check_shapes

FORMAT = "bnnbench-packed"
# 3: conv weights' bit planes channels last (the kernels' layout: loaded in place);
# 2: the network is a run spec (registry names + plain arguments), conv planes in
#    (O, C/g, KH, KW) order: still read, the planes reordered on load; 1 held a Hydra config
FORMAT_VERSION = "3"
READ_VERSIONS = ("2", FORMAT_VERSION)
REQUIRED_METADATA = ("spec", "geometry", "layers")


def packed_tensors(net: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors to write, per-layer encodings) for a network; quantized weights verified exact."""
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
                    meta, parts = encode_exact(name, wq, module.weight_bits, q)
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



def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of a bnnbench export, its header validated
    (:func:`bnnbench.packed.reader.read_header`); one PackedFileError line for anything else."""
    return _export_header(path).metadata


def _export_header(path: Path) -> Header:
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"{path} does not exist (export a run with "
                              "`python -m bnnbench.export run_dir=<dir>`)")
    header = read_header(path)
    meta = header.metadata
    if meta.get("format") != FORMAT:
        raise PackedFileError(f"{path} is not a bnnbench export (a safetensors file without "
                              f"format={FORMAT} metadata)")
    if meta.get("format_version") not in READ_VERSIONS:
        raise PackedFileError(f"{path} has format version {meta.get('format_version')!r:.24}; "
                              f"this bnnbench reads versions {', '.join(READ_VERSIONS)}")
    return header


@dataclass(frozen=True)
class PackedFile:
    """An export's validated header and metadata (no tensor read yet)."""

    path: Path
    header: Header
    spec: Spec
    geometry: dict[str, int]
    layers: dict[str, Any]

    def plain_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors stored as they are (not a packed layer's parts)."""
        return {k: e.shape for k, e in self.header.entries.items()
                if not _packed_key(k, self.layers)}


def inspect_packed(path: Path) -> PackedFile:
    """An export's header and metadata, every field validated, each packed layer's encoding
    checked against the shapes and dtypes its tensors declare: no tensor is read or allocated."""
    path = Path(path)
    header = _export_header(path)
    meta = header.metadata
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise PackedFileError(f"{path} lacks the {missing[0]!r} metadata of a bnnbench export; "
                              "re-export the run with `python -m bnnbench.export`")
    fields = {key: load_json(meta[key], f"{path}: metadata {key!r}") for key in REQUIRED_METADATA}
    spec = check_spec(fields["spec"], f"{path}: spec")
    geometry = check_geometry(fields["geometry"], f"{path}: geometry")
    layers = check_plain(fields["layers"], f"{path}: layers")
    if not isinstance(layers, dict):
        raise PackedFileError(f"{path}: metadata 'layers' must map layer names to encodings")
    for name, lmeta in layers.items():
        prefix = f"{name}.weight."
        parts = {k[len(prefix):]: e.meta() for k, e in header.entries.items()
                 if k.startswith(prefix)}
        check_layer(lmeta, parts, f"{path}: layer {name[:80]}")
    return PackedFile(path, header, spec, geometry, layers)


def packed_spec(path: Path) -> tuple[Spec, dict[str, int]]:
    """(spec, geometry) of an export, validated; no tensor is read."""
    packed = inspect_packed(path)
    return packed.spec, packed.geometry


def load_packed(path: Path, device: str | torch.device = "cpu",
                kernels: str = "auto", cuda_graph: bool = False,
                fuse: bool = True, mmap: bool = False) -> nn.Module:
    """The packed inference model of an export (eval mode).

    The file is data: its header and metadata are validated (:func:`inspect_packed`), the
    network the spec builds is checked on the meta device to hold exactly the file's tensors
    (shapes and dtypes; a spec that would build far more tensors than the file holds is refused
    while it is being built), and only then are the tensors read and the network rebuilt through
    the registries; nothing the file names is instantiated.

    ``mmap``: ``False`` (default) reads the tensors into memory, so the loaded model does not
    depend on the file afterwards (overwriting or truncating it changes nothing); ``True``
    memory-maps them (no copy of the data; the file must then stay unchanged while the model
    lives: a truncated file kills the process with SIGBUS on the next forward).

    ``kernels``: ``auto`` runs every layer :func:`kernel_route` accepts (BinaryNet bit-exact,
    XNOR-Net, Tang's residual binarization, binary-weight linear layers) on
    :mod:`bnnbench.kernels` when it is importable,
    ``never`` keeps every layer's own forward on decoded weights.

    ``fuse`` (with ``kernels=auto``): where a BinaryNet binary layer feeds the next one through
    BatchNorm -> sign only, fold that into the first layer's kernel, which then writes the next
    layer's packed input bits (:mod:`bnnbench.packed.fusion`; bit-exact with the unfused path;
    the fused pairs are listed in the model's ``sign_chains``).

    ``cuda_graph``: wrap the model in :class:`~bnnbench.packed.cuda_graph.CudaGraphed`, which
    captures its forward as one CUDA graph per input shape and replays it. CUDA only.
    """
    if kernels not in ("auto", "never"):
        raise BnnbenchError(f"kernels={kernels!r} is not valid; choose auto or never")
    if not isinstance(mmap, bool):
        raise BnnbenchError(f"mmap={mmap!r} is not valid; choose True or False")
    if cuda_graph and torch.device(device).type != "cuda":
        raise BnnbenchError(f"cuda_graph=True needs device='cuda' (CUDA graphs replay GPU work), "
                            f"got device={str(device)!r}; load on a GPU or drop cuda_graph")
    packed_file = inspect_packed(path)
    net = _checked_empty_net(packed_file)
    tensors = _read_tensors(packed_file, mmap)
    for name, lmeta in packed_file.layers.items():
        layer = net.get_submodule(name)
        prefix = f"{name}.weight."
        parts = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        packed = PackedWeight(lmeta, parts, layer.weight_quantizer)
        layer.weight_quantizer = packed
        layer.weight = None  # the latent weight is gone; quantized_weight() decodes
    net.load_state_dict(tensors, strict=False, assign=True)
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:  # a tensor the file does not hold (an export always holds them all)
        raise PackedFileError(f"{path} holds no value for {left[0]!r}: the file is incomplete; "
                              "re-export the run")
    net = net.to(device).eval()
    if kernels == "auto":
        use_kernels(net)
        net.sign_chains = fuse_sign_chains(net) if fuse else []
    for name in packed_file.layers:  # the kernel routes check their inputs' size themselves
        layer = net.get_submodule(name)
        if not hasattr(layer, "xnor_weight"):
            layer.register_forward_pre_hook(check_input_hook)
    return CudaGraphed(net) if cuda_graph else net


def _checked_empty_net(packed: PackedFile) -> nn.Module:
    """The spec's network on the meta device, after checking that it holds exactly the file's
    tensors: shapes (:func:`bnnbench.trained.check_shapes`) and the dtypes of the tensors stored
    as they are. Both builds run under :func:`_build_budget`."""
    entries = packed.header.entries
    with _build_budget(len(entries), packed.path):
        check_shapes(packed.spec, packed.geometry, packed.plain_shapes(), str(packed.path),
                     packed={name: tuple(meta["shape"]) for name, meta in packed.layers.items()})
        net = _build_empty(packed.spec, packed.geometry)
    state = net.state_dict()
    for key in sorted(packed.plain_shapes()):
        want = state.get(key)
        if want is not None and want.dtype != entries[key].dtype:
            raise PackedFileError(f"{packed.path}: tensor {key} is {entries[key].dtype}, the "
                                  f"model's is {want.dtype}; re-export the run")
    return net


#: a spec may build at most this many modules, parameters and buffers per tensor of the file
#: (plus a constant): a converted network registers a few per stored tensor, so an honest file
#: stays far below, and a crafted ``depth=100000`` is stopped after a few thousand
BUILD_REGISTRATIONS_PER_TENSOR = 16
BUILD_REGISTRATIONS_BASE = 1024


class _OverBudget(Exception):
    pass


@contextmanager
def _build_budget(tensors: int, path: Path):
    """While active, building a network in this thread may register at most
    ``BUILD_REGISTRATIONS_PER_TENSOR * tensors + BUILD_REGISTRATIONS_BASE`` modules,
    parameters and buffers; past that the build stops with one PackedFileError line (a network
    that large cannot hold only the file's tensors, and building it could take minutes). A
    build that fails otherwise (a size from the file whose storage overflows, say) is one
    line too."""
    from torch.nn.modules import module as torch_module

    limit = BUILD_REGISTRATIONS_PER_TENSOR * tensors + BUILD_REGISTRATIONS_BASE
    owner, count = threading.get_ident(), 0

    def hook(*_: Any) -> None:
        nonlocal count
        if threading.get_ident() == owner:
            count += 1
            if count > limit:
                raise _OverBudget

    handles = [torch_module.register_module_module_registration_hook(hook),
               torch_module.register_module_parameter_registration_hook(hook),
               torch_module.register_module_buffer_registration_hook(hook)]
    try:
        yield
    except _OverBudget:
        raise PackedFileError(f"{path}: the model its spec builds has far more layers than the "
                              f"file's {tensors} tensors (over {limit} modules and tensors); "
                              "refused while building it") from None
    except BnnbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a size whose storage overflows int64
        raise PackedFileError(f"{path}: the model its spec builds cannot be built "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:100]})"
                              ) from None
    finally:
        for handle in handles:
            handle.remove()


def _read_tensors(packed: PackedFile, mmap: bool) -> dict[str, Tensor]:
    """The file's tensors, a version-2 file's conv bit planes put channels last."""
    tensors = read_tensors(packed.path, packed.header, mmap=mmap)
    if packed.header.metadata["format_version"] == "2":
        for name, lmeta in packed.layers.items():
            key = f"{name}.weight.bits"
            if lmeta["encoding"] != "quantizer":
                tensors[key] = channels_last_planes(tensors[key], lmeta["shape"])
    return tensors


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
    """(spec, geometry, per-layer encodings, tensors read into memory) of an export, every field
    validated: one PackedFileError naming the field for anything a bnnbench export would not
    hold."""
    packed = inspect_packed(path)
    return packed.spec, packed.geometry, packed.layers, _read_tensors(packed, mmap=False)
