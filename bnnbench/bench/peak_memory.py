"""Peak memory of loading and running one model, in a fresh process (used by the packed bench).

``python -m bnnbench.bench.peak_memory packed <file.safetensors> <batch>`` or
``python -m bnnbench.bench.peak_memory float <in_chans> <num_classes> <img_size> <batch>
<overrides...>``
prints one JSON line, in MiB: the resident set after the imports and a warm-up of the packed
kernels (whose one-off compilation is not the model's memory), the peak resident set while
loading the model and while running one forward, and the bytes of the model's state_dict. Linux: the peak is the kernel's
high-water mark (``VmHWM``), reset after the warm-up (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current resident set


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    import torch

    import bnnbench.kernels as K
    from bnnbench.packed.format import load_packed, read_metadata
    from bnnbench.spec import build_net, check_geometry, check_spec

    torch.set_grad_enabled(False)
    # warm the CPU kernels (numba loads/compiles them on first use): not the model's memory;
    # the fused BatchNorm -> sign ones too (float and packed inputs), which fused models call
    w = K.pack_signs(torch.randn(64, 64))
    K.xnor_gemm(K.pack_signs(torch.randn(2, 64)), w, 64)
    K.binary_weight_gemm(torch.randn(2, 64), w, torch.ones(64))
    K.binary_conv2d(torch.randn(1, 32, 4, 4), K.pack_conv_weight(torch.randn(8, 32, 3, 3)),
                    torch.ones(8), padding=(1, 1))
    zeros = torch.zeros(32, dtype=torch.int32)
    conv_w = K.pack_conv_weight(torch.randn(32, 32, 3, 3))
    K.xnor_gemm_signs(K.pack_signs(torch.randn(2, 64)), w[:32], 64, zeros, zeros)
    bits = K.binary_conv2d_signs(torch.randn(1, 32, 4, 4), conv_w, zeros, zeros, padding=(1, 1))
    K.binary_conv2d(bits, conv_w, None, None, padding=(1, 1), in_channels=32)
    K.binary_conv2d_signs(bits, conv_w, zeros, zeros, padding=(1, 1), in_channels=32)
    if args[0] == "packed":
        meta = read_metadata(args[1])
        spec = check_spec(json.loads(meta["spec"]), "spec")
        geometry = check_geometry(json.loads(meta["geometry"]))
        batch = int(args[2])
    else:
        from bnnbench.bench.packed_inference import composed

        spec = composed(args[5:])
        geometry = {"in_chans": int(args[1]), "num_classes": int(args[2]),
                    "img_size": int(args[3])}
        batch = int(args[4])
    with torch.device("meta"):  # the classes and libraries the network needs: imports, not data
        build_net(spec, geometry)
    import gc

    gc.collect()
    _reset_peak()
    base = _status_mib("VmRSS")
    net = load_packed(args[1]) if args[0] == "packed" else build_net(spec, geometry).eval()
    loaded = _status_mib("VmHWM")
    x = torch.randn(batch, geometry["in_chans"], geometry["img_size"], geometry["img_size"])
    net(x)
    tensor_mib = sum(t.numel() * t.element_size() for t in net.state_dict().values()) / 2**20
    print(json.dumps({"base_mib": base, "load_peak_mib": loaded, "peak_mib": _status_mib("VmHWM"),
                      "tensor_mib": tensor_mib}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
