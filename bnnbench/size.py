"""Honest model size: every stored bit, per layer, under a named counting convention.

What is counted (the ``deployed`` convention, the default): every tensor the deployed network
needs, i.e. every parameter and persistent buffer of the converted model, except

* the *latent* real weights of a quantized layer, which are replaced by what the layer deploys:
  ``precision`` bits per weight (read from the layer's weight quantizer, as larq reads
  ``precision``) plus ``scales_per_channel`` float32 values per output channel and
  ``scales_per_tensor`` float32 values per layer (also read from the quantizer);
* tensors *inside* a weight quantizer (they only compute the quantized weight; the stored scales
  above stand for them);
* ``num_batches_tracked`` (a training counter).

So BatchNorm costs its affine pair *and* its running statistics (4 float32 per channel), PReLU
slopes, Tang's scale layer, ABC-Net's activation shifts and betas, and biases all count. This is
exactly what :mod:`bnnbench.packed.format` writes, so the exported file's size on disk is this
number plus the safetensors header.

Other conventions (``Convention``) reproduce how papers count, e.g. ``tang2017``: the first layer
float32 (weights and bias), every other binary layer 1 bit per weight plus ``floats_per_channel``
float32 per output channel, a binary last layer 1 bit per weight only, nothing else counted.

Units: bytes; MiB = 2**20 bytes (what papers print as "MB"). A quantized tensor is stored as one
bitstream per tensor, so its bytes are ``ceil(numel * bits / 8)``.

MACs: multiply-accumulates of every Conv2d/Linear for one input of the data's geometry, measured by
a forward pass with hooks. ``binary_mac_share``: share of MACs in layers whose weights are
quantized (``precision < 32``: multiplication-free, sums of +-alpha); ``xnor_mac_share``: share in
layers whose weights *and* inputs are quantized (XNOR/popcount-able).

CLI: ``python -m bnnbench.size [+method=<m>] [model=...] [data=...] [size.convention=...]
[format=table|csv|latex] [out=<path>]`` composes the same config as a training run
(``conf/size.yaml`` includes ``conf/config.yaml``, but claims no run directory), prints the
per-layer table and writes ``size.json`` to ``out`` (a file path, or a directory to put size.json
in), else into ``hydra.run.dir`` (default: the current directory), never replacing a file already
there (``size-1.json``, ...); ``format=csv`` / ``latex`` prints the table as CSV / a LaTeX
``tabular`` instead and writes it beside size.json as ``size.csv`` / ``size.tex``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError, check_range
from bnnbench.files import free_path, write_atomic
from bnnbench.nn.layers import _QuantMixin
from bnnbench.nn.quantizers import Quantizer

MIB = 2**20
FLOAT_BITS = 32
FP_RULES = ("first", "last", "shortcut", "all")
SIZE_FILE = "size.json"
SKIPPED_BUFFERS = ("num_batches_tracked",)


# ---------------------------------------------------------------------------------- convention
@dataclasses.dataclass(frozen=True)
class Convention:
    """How bits are counted. Every field is a documented choice; presets in :data:`CONVENTIONS`.

    Attributes:
        name: label printed with the result.
        full_precision: ``None`` reads each layer: a Conv2d/Linear is quantized when its weight
            quantizer has ``precision < 32`` (the model as the method converted it). Otherwise a
            tuple of rules naming the full-precision layers of any model, every other
            Conv2d/Linear counting as binary: ``first`` (first Conv2d/Linear in registration
            order), ``last`` (the last one), ``shortcut`` (ResNet ``downsample`` convs), ``all``.
        weight_bits: bits per weight of a binary layer under rules (``None``: read the layer).
        floats_per_channel: float32 values stored per output channel of a binary layer.
            ``None``: what the layer stores (its bias, if counted, plus the weight quantizer's
            ``scales_per_channel`` and ``scales_per_tensor``). An int replaces all of those.
        last_floats_per_channel: the same for the last Conv2d/Linear when it is binary
            (``None``: as ``floats_per_channel``).
        count_bias: count biases of full-precision layers (and of binary layers when
            ``floats_per_channel`` is None).
        count_bn: count BatchNorm parameters (affine weight and bias).
        count_buffers: count float buffers (BatchNorm running mean and variance, ...).
        count_other: count every other parameter (PReLU slopes, scale layers, activation
            quantizers' shifts/betas, ...).
    """

    name: str = "deployed"
    full_precision: tuple[str, ...] | None = None
    weight_bits: int | None = None
    floats_per_channel: int | None = None
    last_floats_per_channel: int | None = None
    count_bias: bool = True
    count_bn: bool = True
    count_buffers: bool = True
    count_other: bool = True

    def __post_init__(self) -> None:
        if self.full_precision is not None:
            if not isinstance(self.full_precision, (list, tuple)):
                raise BnnbenchError(f"size.full_precision={self.full_precision!r} is not valid: "
                                    f"need a list of {', '.join(FP_RULES)} or null (read the "
                                    "layers)")
            rules = tuple(self.full_precision)
            bad = [r for r in rules if r not in FP_RULES]
            if bad:
                raise BnnbenchError(f"size.full_precision: unknown rule {bad[0]!r}; use a list "
                                    f"of {', '.join(FP_RULES)} or null (read the layers)")
            object.__setattr__(self, "full_precision", rules)
        for key in ("count_bias", "count_bn", "count_buffers", "count_other"):
            if not isinstance(getattr(self, key), bool):
                raise BnnbenchError(f"size.{key}={getattr(self, key)!r} is not valid: need true "
                                    "or false")
        for key in ("weight_bits", "floats_per_channel", "last_floats_per_channel"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0
                                      or (key == "weight_bits" and not 1 <= value <= 32)):
                raise BnnbenchError(f"size.{key}={value!r} is out of range: need an integer "
                                    + ("in [1, 32]" if key == "weight_bits" else ">= 0"))

    def describe(self) -> str:
        """One line: which layers are FP, what a binary layer stores, what else counts."""
        if self.full_precision is None:
            layers = "precision read from each layer"
        else:
            fp = ", ".join(self.full_precision) or "none"
            bits = self.weight_bits if self.weight_bits is not None else "layer's"
            layers = f"FP layers: {fp}; others binary at {bits} bit/weight"
        fpc = ("bias + quantizer scales" if self.floats_per_channel is None
               else f"{self.floats_per_channel} float32/out-channel")
        if self.last_floats_per_channel is not None:
            fpc += f" (binary last layer: {self.last_floats_per_channel})"
        counted = [k for k, v in (("bias", self.count_bias), ("BN", self.count_bn),
                                  ("buffers", self.count_buffers),
                                  ("other params", self.count_other)) if v]
        others = ", ".join(counted) or "nothing else"
        return f"{layers}; binary layer stores {fpc}; counts: {others}"


CONVENTIONS: dict[str, Convention] = {
    # honest: what bnnbench.export writes (minus the header)
    "deployed": Convention("deployed"),
    # the float model as papers size it: every parameter in float32, buffers not counted
    "fp32": Convention("fp32", full_precision=("all",), count_buffers=False),
    # Tang et al. 2017 (see reports/tang_sizes.md): first layer FP, 1 bit + 1 float32 per output
    # channel per binary layer, binary last layer 1 bit/weight only, nothing else
    "tang2017": Convention("tang2017", full_precision=("first",), weight_bits=1,
                           floats_per_channel=1, last_floats_per_channel=0, count_bn=False,
                           count_buffers=False, count_other=False),
}


def get_convention(name: str, **overrides: Any) -> Convention:
    """A preset by name, with fields replaced by the non-None ``overrides``."""
    if name not in CONVENTIONS:
        raise BnnbenchError(f"size.convention={name!r} is not valid; choose one of: "
                            f"{', '.join(CONVENTIONS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "full_precision" in changes:
        fp = changes["full_precision"]
        changes["full_precision"] = (None if fp in ("layers", "model") else
                                     (fp,) if isinstance(fp, str) else
                                     tuple(fp) if isinstance(fp, (list, tuple)) else fp)
    unknown = set(changes) - {f.name for f in dataclasses.fields(Convention)}
    if unknown:
        raise BnnbenchError(f"size: unknown convention field {sorted(unknown)[0]!r}")
    return dataclasses.replace(CONVENTIONS[name], **changes)


# ---------------------------------------------------------------------------------- results
@dataclasses.dataclass
class LayerSize:
    """One module that stores something. ``bits`` is exact; ``bytes`` rounds each bitstream up."""

    name: str
    kind: str
    role: str             # binary | fp | bn | other
    params: int           # stored values counted (weights + floats)
    weight_bits: int | None
    input_bits: int | None
    bits: int
    bytes: int
    macs: int
    detail: str


@dataclasses.dataclass
class ModelSize:
    """Totals under one convention. ``compression = fp32_bytes / total_bytes``."""

    convention: Convention
    layers: list[LayerSize]
    total_bytes: int
    fp32_bytes: int
    input_shape: tuple[int, ...] | None
    macs: int
    macs_by_bits: dict[str, int]

    @property
    def total_bits(self) -> int:
        return sum(r.bits for r in self.layers)

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB

    @property
    def fp32_mib(self) -> float:
        return self.fp32_bytes / MIB

    @property
    def compression(self) -> float:
        return self.fp32_bytes / self.total_bytes if self.total_bytes else float("nan")

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def binary_macs(self) -> int:
        return sum(r.macs for r in self.layers if r.weight_bits is not None and r.weight_bits < 32)

    @property
    def xnor_macs(self) -> int:
        return sum(r.macs for r in self.layers if r.weight_bits is not None and r.weight_bits < 32
                   and r.input_bits is not None and r.input_bits < 32)

    def to_dict(self) -> dict[str, Any]:
        share = (lambda n: n / self.macs if self.macs else None)
        return {
            "units": "bytes; MiB = 2**20 bytes; macs per input sample",
            "convention": dataclasses.asdict(self.convention),
            "convention_text": self.convention.describe(),
            "total_bytes": self.total_bytes,
            "total_mib": self.total_mib,
            "fp32_bytes": self.fp32_bytes,
            "fp32_mib": self.fp32_mib,
            "compression": self.compression,
            "params": self.params,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "macs": self.macs,
            "binary_macs": self.binary_macs,
            "binary_mac_share": share(self.binary_macs),
            "xnor_macs": self.xnor_macs,
            "xnor_mac_share": share(self.xnor_macs),
            "macs_by_bits": self.macs_by_bits,
            "layers": [dataclasses.asdict(r) for r in self.layers],
        }


# ---------------------------------------------------------------------------------- model walk
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def weight_layer_names(model: nn.Module) -> list[str]:
    """Every Conv2d/Linear (quantized or not) in registration order, as the methods see them."""
    return [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def _is_shortcut(name: str) -> bool:
    parts = name.split(".")
    return "downsample" in parts or "shortcut" in parts


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor, bool]]:
    """(name, tensor, is_buffer) that ``module`` itself holds and its state_dict would save."""
    for key, p in module._parameters.items():
        if p is not None:
            yield key, p, False
    skip = getattr(module, "_non_persistent_buffers_set", set())
    for key, b in module._buffers.items():
        if b is not None and key not in skip and key not in SKIPPED_BUFFERS:
            yield key, b, True


def weight_quantizer_names(model: nn.Module) -> set[str]:
    """Module names of the weight quantizers of quantized layers (their tensors are not stored)."""
    return {f"{n}.weight_quantizer" if n else "weight_quantizer"
            for n, m in model.named_modules() if isinstance(m, _QuantMixin)}


def deployed_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor, bool]]:
    """Every tensor a deployed model stores, as (module name, module, key, tensor, is_buffer).

    The export writes these (latent weights of quantized layers replaced by their packed form);
    the ``deployed`` accounting counts them. Skipped: tensors under a weight quantizer, and
    ``num_batches_tracked``.
    """
    skip_prefixes = tuple(f"{n}." for n in weight_quantizer_names(model))
    skip_exact = weight_quantizer_names(model)
    for name, module in model.named_modules():
        if name in skip_exact or name.startswith(skip_prefixes):
            continue
        for key, tensor, is_buffer in _own_tensors(module):
            yield name, module, key, tensor, is_buffer
        if isinstance(module, _QuantMixin) and getattr(module, "weight", None) is None:
            # a packed model (bnnbench.packed.format.load_packed): the weight lives packed in its
            # weight quantizer; count it from its shape like any deployed weight
            shape = getattr(module.weight_quantizer, "meta", {}).get("shape")
            if shape is not None:
                yield name, module, "weight", torch.empty(shape, device="meta"), False


def layer_bits(layer: nn.Module) -> tuple[int, int]:
    """(weight bits, input bits) of a Conv2d/Linear: read from its quantizers, else dtype bits."""
    if isinstance(layer, _QuantMixin):
        return int(layer.weight_bits), int(layer.input_bits)
    return layer.weight.element_size() * 8, FLOAT_BITS


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs per sample of every Conv2d/Linear for an input of ``input_shape`` (C, H, W) or (F,).

    Runs one forward pass (eval mode, batch of 1 zeros on the model's device) with hooks; the
    model's train/eval state is restored afterwards.
    """
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, _inp: Any, out: Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            else:
                per_out = mod.in_features
            macs[name] = macs.get(name, 0) + out.numel() // out.shape[0] * per_out
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, WEIGHT_LAYERS):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


# ---------------------------------------------------------------------------------- accounting
def _ceil_bytes(bits: int) -> int:
    return (bits + 7) // 8


def account(model: nn.Module, convention: Convention | str = "deployed",
            input_shape: Sequence[int] | None = None) -> ModelSize:
    """Size of ``model`` under ``convention``; MACs too when ``input_shape`` (C, H, W) is given.

    ``fp32_bytes`` is the same model under the same convention with every layer full precision
    (float32 weights and biases, no quantizer scales): the float model it compresses.
    """
    conv = CONVENTIONS[convention] if isinstance(convention, str) else convention
    if isinstance(convention, str) and convention not in CONVENTIONS:
        raise BnnbenchError(f"unknown convention {convention!r}")
    macs = count_macs(model, input_shape) if input_shape is not None else {}
    rows = _rows(model, conv, macs)
    fp_conv = dataclasses.replace(conv, name=f"{conv.name} (all fp32)", full_precision=("all",),
                                  weight_bits=None, floats_per_channel=None,
                                  last_floats_per_channel=None)
    fp_rows = _rows(model, fp_conv, {}, force_fp32=True)
    by_bits: dict[str, int] = {}
    for r in rows:
        if r.macs:
            key = f"w{r.weight_bits}a{r.input_bits}"
            by_bits[key] = by_bits.get(key, 0) + r.macs
    return ModelSize(conv, rows, sum(r.bytes for r in rows), sum(r.bytes for r in fp_rows),
                     tuple(input_shape) if input_shape is not None else None,
                     sum(macs.values()), by_bits)


def _binary_names(model: nn.Module, conv: Convention) -> tuple[set[str], str | None]:
    names = weight_layer_names(model)
    last = names[-1] if names else None
    if conv.full_precision is None:
        return {n for n in names if layer_bits(model.get_submodule(n))[0] < 32}, last
    rules = conv.full_precision
    if "all" in rules:
        return set(), last
    fp = set()
    if "first" in rules and names:
        fp.add(names[0])
    if "last" in rules and names:
        fp.add(names[-1])
    if "shortcut" in rules:
        fp.update(n for n in names if _is_shortcut(n))
    return {n for n in names if n not in fp}, last


def _rows(model: nn.Module, conv: Convention, macs: dict[str, int],
          force_fp32: bool = False) -> list[LayerSize]:
    binary, last = _binary_names(model, conv)
    rows: dict[str, LayerSize] = {}
    modules = dict(model.named_modules())

    def row(name: str, module: nn.Module, role: str) -> LayerSize:
        if name not in rows:
            wb = ib = None
            if isinstance(module, WEIGHT_LAYERS):
                wb, ib = layer_bits(module)
                if role == "fp":
                    wb = FLOAT_BITS if force_fp32 else module.weight.element_size() * 8
                elif conv.weight_bits is not None:
                    wb = conv.weight_bits
                if force_fp32:
                    ib = FLOAT_BITS
            rows[name] = LayerSize(name or "(model)", type(module).__name__, role, 0, wb, ib, 0,
                                   0, macs.get(name, 0), "")
        return rows[name]

    def add(r: LayerSize, numel: int, bits_each: int, what: str) -> None:
        if numel == 0:
            return
        bits = numel * bits_each
        r.params += numel
        r.bits += bits
        r.bytes += _ceil_bytes(bits)
        sep = " + " if r.detail else ""
        r.detail += f"{sep}{numel:,}x{bits_each}b {what}"

    for name, module, key, tensor, is_buffer in deployed_tensors(model):
        elem_bits = FLOAT_BITS if force_fp32 and tensor.is_floating_point() \
            else tensor.element_size() * 8
        if isinstance(module, WEIGHT_LAYERS) and key in ("weight", "bias"):
            is_binary = name in binary
            r = row(name, module, "binary" if is_binary else "fp")
            if not is_binary:
                if key == "weight" or conv.count_bias:
                    add(r, tensor.numel(), elem_bits, key)
                continue
            if key == "weight":
                add(r, tensor.numel(), r.weight_bits, "weight")
                fpc = conv.floats_per_channel
                if name == last and conv.last_floats_per_channel is not None:
                    fpc = conv.last_floats_per_channel
                out = _out_channels(module)
                if fpc is not None:
                    add(r, fpc * out, FLOAT_BITS, "float/channel")
                elif isinstance(module, _QuantMixin):
                    q: Quantizer = module.weight_quantizer
                    add(r, int(q.scales_per_channel) * out, FLOAT_BITS, "scale/channel")
                    add(r, int(q.scales_per_tensor), FLOAT_BITS, "scale/tensor")
            elif conv.floats_per_channel is None and conv.count_bias:
                add(r, tensor.numel(), elem_bits, "bias")
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            counted = conv.count_buffers if is_buffer else conv.count_bn
            role = "bn"
        else:
            counted = conv.count_buffers if is_buffer else conv.count_other
            role = "other"
        if counted:
            add(row(name, module, role), tensor.numel(), elem_bits, key)
    # weight layers with MACs but nothing counted (e.g. bias-free FP layers under a convention
    # that counts nothing) still get a row so MACs add up
    for name in macs:
        if name not in rows:
            row(name, modules[name], "binary" if name in binary else "fp")
    order = {n: i for i, n in enumerate(modules)}
    return sorted(rows.values(), key=lambda r: order.get(r.name if r.name != "(model)" else "",
                                                          -1))


# ---------------------------------------------------------------------------------- output
def format_bytes(n: float) -> str:
    if n >= MIB:
        return f"{n / MIB:,.3f} MiB"
    if n >= 1024:
        return f"{n / 1024:,.2f} KiB"
    return f"{n:,.0f} B"


TABLE_COLUMNS = ("layer", "type", "role", "values", "W bits", "A bits", "bytes", "MACs")
TABLE_FORMATS = ("table", "csv", "latex")
# the suffix of the file each format of the per-layer table is written to, beside size.json
# (size.csv, size.tex: the json file's name with this suffix)
TABLE_SUFFIXES = {"csv": ".csv", "latex": ".tex"}


def table_rows(size: ModelSize) -> list[list[Any]]:
    """The per-layer table as values (None: not applicable), the totals as its last row."""
    rows: list[list[Any]] = [[r.name, r.kind, r.role, r.params, r.weight_bits, r.input_bits,
                              r.bytes, r.macs or None] for r in size.layers]
    rows.append(["total", "", "", size.params, None, None, size.total_bytes, size.macs or None])
    return rows


def render_table(size: ModelSize, title: str = "") -> str:
    """The per-layer table and totals as text (rich table)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or f"model size, convention '{size.convention.name}'",
                  box=box.SIMPLE_HEAD, caption=size.convention.describe())
    for i, col in enumerate(TABLE_COLUMNS):
        table.add_column(col, justify="left" if i < 3 else "right")
    *layers, total = table_rows(size)
    cell = (lambda v: "" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
    for row in layers:
        table.add_row(*(cell(v) for v in row))
    table.add_section()
    table.add_row(*(cell(v) for v in total))
    console = Console(width=140, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
        console.print(f"total {format_bytes(size.total_bytes)} ({size.total_bytes:,} bytes); "
                      f"float32 {format_bytes(size.fp32_bytes)}; compression "
                      f"{size.compression:.2f}x")
        if size.macs:
            console.print(f"MACs/sample {size.macs:,}; binary-weight share "
                          f"{size.binary_macs / size.macs:.1%}; binary weights and inputs "
                          f"{size.xnor_macs / size.macs:.1%}")
    return cap.get()


def render_csv(size: ModelSize) -> str:
    """The per-layer table as CSV (header row, one row per layer, ``total`` last; empty cells
    where a column does not apply; plain integers)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["layer", "type", "role", "values", "weight_bits", "input_bits", "bytes",
                     "macs"])
    writer.writerows([["" if v is None else v for v in row] for row in table_rows(size)])
    return buf.getvalue()


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (layer names hold ``_`` and ``.``)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in text)


def render_latex(size: ModelSize, title: str = "") -> str:
    """The per-layer table as a booktabs ``tabular`` (numbers with ``{,}`` thousands separators),
    the convention and totals as a comment above it."""
    cell = (lambda v: "" if v is None else f"{v:,}".replace(",", "{,}") if isinstance(v, int)
            else latex_escape(str(v)))
    *layers, total = table_rows(size)
    described = " ".join(size.convention.describe().split())
    lines = [f"% {latex_escape(title or 'model size')}: {described}",
             f"% total {size.total_bytes:,} bytes; float32 {size.fp32_bytes:,} bytes; "
             f"compression {size.compression:.2f}x",
             r"\begin{tabular}{lll" + "r" * (len(TABLE_COLUMNS) - 3) + "}", r"\toprule",
             " & ".join(TABLE_COLUMNS) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in layers]
    lines += [r"\midrule", " & ".join(cell(v) for v in total) + r" \\", r"\bottomrule",
              r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_json(size: ModelSize, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """``size`` (and ``extra``) as JSON in ``path``, a new file (never replacing one, even one
    that a racing process writes meanwhile)."""
    data = size.to_dict()
    if extra:
        data = {**extra, **data}
    return write_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n",
                        replace=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------------- CLI
def output_path(where: Path) -> Path:
    """Where size.json goes: ``where`` when it names a .json file, else ``where/size.json``; a
    taken name gets ``-1``, ``-2``, ... (nothing already written is replaced)."""
    return free_path(where if where.suffix == ".json" else where / SIZE_FILE)


def size_config(cfg: Any) -> ModelSize:
    """The Hydra app's job (conf/size.yaml): account the network the same overrides would
    train, print the table (``format``), write size.json (and size.csv / size.tex)."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from bnnbench.cli import output_of
    from bnnbench.spec import build_net, data_geometry, spec_from_config

    table_format = str(cfg.get("format", "table"))
    if table_format not in TABLE_FORMATS:
        raise BnnbenchError(f"format={table_format!r} is not one of {', '.join(TABLE_FORMATS)}")
    spec = spec_from_config(cfg)
    geometry = data_geometry(spec)
    for key in ("in_chans", "num_classes", "img_size"):
        if cfg.size.get(key) is not None:
            check_range(f"size.{key}", cfg.size[key], low=1, integer=True)
            geometry[key] = int(cfg.size[key])
    net = build_net(spec, geometry)
    opts = OmegaConf.to_container(cfg.size, resolve=True)
    assert isinstance(opts, dict)
    name = opts.pop("convention")
    for key in ("in_chans", "num_classes", "img_size"):
        opts.pop(key, None)
    convention = get_convention(name, **opts)
    shape = input_shape_for(net, geometry)
    size = account(net, convention, shape)
    choices = HydraConfig.get().runtime.choices
    title = (f"{choices.get('method') or 'fp'} / {choices.get('model')} / "
             f"{choices.get('data')}: convention '{convention.name}'")
    out = output_path(output_of(cfg) or Path.cwd())
    extra = {"method": choices.get("method") or "fp", "model": choices.get("model"),
             "data": choices.get("data"), "geometry": geometry}
    if table_format == "table":
        print(render_table(size, title), end="")
    else:  # the table alone on stdout (pipeable); the files written are named on stderr
        text = render_csv(size) if table_format == "csv" else render_latex(size, title)
        print(text, end="")
        table_file = write_atomic(free_path(out.with_suffix(TABLE_SUFFIXES[table_format])), text,
                                  replace=False)
        print(f"wrote {table_file}", file=sys.stderr)
    write_json(size, out, extra)
    print(f"wrote {out}", file=sys.stderr)
    return size


def input_shape_for(net: nn.Module, geometry: dict[str, int]) -> tuple[int, ...]:
    """(C, H, W) of the data; every model here takes images (the MLP flattens them itself)."""
    return (geometry["in_chans"], geometry["img_size"], geometry["img_size"])


def main() -> None:
    """``python -m bnnbench.size`` / ``bnnbench size``: a Hydra app on conf/size.yaml."""
    from bnnbench.cli import hydra_app

    hydra_app("size", size_config)()


if __name__ == "__main__":
    main()
