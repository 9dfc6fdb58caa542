"""End-to-end packed inference vs the float model: ``python -m bnnbench.bench.packed_inference``.

Builds BinaryNet (``+method=bnn``) networks, and XNOR-Net and Tang et al. MLPs, from the shipped
configs, exports them with :func:`bnnbench.packed.format.save_packed`, loads the packed
inference model (:func:`bnnbench.packed.format.load_packed`, whose binary layers run on
``bnnbench.kernels``) and times one forward of each against the float network of the same
architecture (eval mode, same inputs), after checking that the packed model predicts the classes
the trained one does. Writes ``reports/packed_inference.md``. Speed does not depend on the
trained values, so the networks keep their initial weights.

CPU rows always run (embedded-digits geometry, fp32 reference). GPU rows run when CUDA is
available: ResNet-18 and NIN at ImageNet geometry (3x224x224, 1000 classes), batch 1 and 256,
the packed model (Triton kernels, fp16 float layers) against the fp16 float network, timed with
``triton.testing`` (CUDA graphs where capture works); otherwise they are written as pending.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bnnbench.bench import (GEOMETRY, MLP_4096, composed, cpu_model, lce, median_ms,
                            trained_like_batchnorm)
from bnnbench.packed.format import load_packed, save_packed
from bnnbench.spec import build_net
from bnnbench.files import write_atomic

ROOT = Path(__file__).resolve().parents[2]
IMAGENET = {"in_chans": 3, "num_classes": 1000, "img_size": 224}
GPU_CASES = (  # (label, overrides, batch sizes): the end-to-end GPU goal (>= 3x at batch 1)
    ("resnet18 (ImageNet 224 px)", ["model=resnet18"], (1, 256)),
    ("nin (ImageNet 224 px)", ["model=nin"], (1, 256)),
)
PENDING = "pending (no GPU in this session)"
CASES = (  # (label, method, overrides, batch sizes, input geometry)
    ("mlp 3x1024 (config default)", "bnn", ["model=mlp", "model.hidden_features=1024"],
     (1, 256), GEOMETRY),
    ("mlp 3x4096 (BinaryNet paper)", "bnn", MLP_4096, (1, 256), GEOMETRY),
    ("mlp 3x4096", "xnor", MLP_4096, (1, 256), GEOMETRY),
    ("mlp 3x4096, m=2 residual planes", "tang", MLP_4096, (1, 256), GEOMETRY),
    ("resnet18 (28 px stem)", "bnn", ["model=resnet18"], (1, 32), GEOMETRY),
    ("resnet18 (ImageNet 224 px)", "bnn", ["model=resnet18"], (1, 8), IMAGENET),
    ("nin (ImageNet 224 px)", "bnn", ["model=nin"], (1, 8), IMAGENET),
)


@torch.inference_mode()
def measure(overrides: list[str], batches: tuple[int, ...], repeats: int, workdir: Path,
            geometry: dict[str, int] = GEOMETRY,
            method: str = "bnn") -> list[tuple[int, float, float, float, float]]:
    """Per batch: (batch, fp32 reference ms, trained-module ms, packed ms, top-1 agreement %).

    Agreement: the share of inputs whose packed-model class equals the trained module's.
    """
    reference = build_net(composed(overrides), geometry).eval()  # no method: float32 network
    cfg = composed([f"+method={method}", *overrides])
    net = trained_like_batchnorm(build_net(cfg, geometry)).eval()
    key = abs(hash((method, tuple(overrides), geometry["img_size"])))
    path = save_packed(net, workdir / f"{key}.safetensors", cfg, geometry)
    packed = load_packed(path)
    rows = []
    for batch in batches:
        x = torch.randn(batch, geometry["in_chans"], geometry["img_size"], geometry["img_size"])
        agree = (net(x).argmax(-1) == packed(x).argmax(-1)).float().mean().item() * 100
        rows.append((batch, median_ms(lambda: reference(x), repeats),
                     median_ms(lambda: net(x), repeats), median_ms(lambda: packed(x), repeats),
                     agree))
    return rows


@torch.inference_mode()
def measure_device(overrides: list[str], batches: tuple[int, ...], workdir: Path,
                   device: torch.device, dtype: torch.dtype, geometry: dict[str, int],
                   timer: Callable[[Callable[[], object]], float],
                   eager_timer: Callable[[Callable[[], object]], float] | None = None,
                   profile_batch: int | None = None) -> list[dict]:
    """Per batch: float network and packed model times (ms) and the top-1 agreement (%).

    The float network and the packed model's float layers run in ``dtype`` on ``device``; the
    agreement compares the packed model's classes with the trained BinaryNet module's (fp32).
    ``timer`` times CUDA-graph replays; ``eager_timer`` (optional) plain eager calls, Python
    included. At ``profile_batch`` the rows carry a profiler table of the packed forward.
    """
    reference = build_net(composed(overrides), geometry).to(device, dtype).eval()
    cfg = composed(["+method=bnn", *overrides])
    net = trained_like_batchnorm(build_net(cfg, geometry)).eval()
    path = save_packed(net, workdir / f"{abs(hash((tuple(overrides), 'device')))}.safetensors",
                       cfg, geometry)
    packed = load_packed(path, device=device).to(dtype)
    unfused = load_packed(path, device=device, fuse=False).to(dtype)  # BN -> sign not folded
    net = net.to(device)
    rows = []
    for batch in batches:
        x = torch.randn(batch, geometry["in_chans"], geometry["img_size"], geometry["img_size"],
                        device=device)
        xd = x.to(dtype)
        agree = (net(x).argmax(-1) == packed(xd).argmax(-1)).float().mean().item() * 100
        row = {"batch": batch, "fp_ms": timer(lambda: reference(xd)),
               "packed_ms": timer(lambda: packed(xd)), "agree": agree,
               "unfused_ms": timer(lambda: unfused(xd)),
               "fused_pairs": len(packed.sign_chains),
               "fused_same": torch.equal(packed(xd), unfused(xd))}
        if eager_timer is not None:
            row["fp_eager_ms"] = eager_timer(lambda: reference(xd))
            row["packed_eager_ms"] = eager_timer(lambda: packed(xd))
            if device.type == "cuda":  # what a user gets from load_packed(cuda_graph=True)
                graphed = load_packed(path, device=device, cuda_graph=True).to(dtype)
                same = torch.equal(graphed(xd).argmax(-1), packed(xd).argmax(-1))
                row["graphed_ms"] = eager_timer(lambda: graphed(xd))
                row["graphed_same"] = same
        if batch == profile_batch:
            row["profile"] = profile_table(lambda: packed(xd))
        rows.append(row)
    return rows


MEMORY_CASES = (  # (label, overrides, geometry, batch): the memory goal
    ("mlp 3x4096 (BinaryNet paper)", MLP_4096, GEOMETRY, 1),
    ("resnet18 (ImageNet 224 px)", ["model=resnet18"], IMAGENET, 1),
)


def _child_peak(args: list[str]) -> dict[str, float]:
    """Run :mod:`bnnbench.bench.peak_memory` in a fresh process; its JSON line."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bnnbench.bench.peak_memory", *args],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else
                           f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_rows(workdir: Path, cases=MEMORY_CASES) -> list[str]:
    """Peak memory a fresh process adds to load and run the packed model vs the float network.

    Goal (the packed-path issue): the packed model adds at most twice its file size plus its
    activations; the activations are taken as the float network's added peak minus its
    parameter bytes (same input, same batch).
    """
    rows = []
    for label, overrides, geometry, batch in cases:
        cfg = composed(["+method=bnn", *overrides])
        net = trained_like_batchnorm(build_net(cfg, geometry)).eval()
        path = save_packed(net, workdir / f"mem{abs(hash(label))}.safetensors", cfg, geometry)
        file_mib = path.stat().st_size / 2**20
        _child_peak(["packed", str(path), str(batch)])  # fills numba's on-disk kernel cache
        packed = _child_peak(["packed", str(path), str(batch)])
        dense = _child_peak(["float", str(geometry["in_chans"]), str(geometry["num_classes"]),
                             str(geometry["img_size"]), str(batch), *overrides])
        float_params = dense["tensor_mib"]
        p_add = packed["peak_mib"] - packed["base_mib"]
        f_add = dense["peak_mib"] - dense["base_mib"]
        act = max(0.0, f_add - float_params)
        goal = 2 * file_mib + act
        rows.append(f"| {label} | {batch} | {file_mib:.1f} | {float_params:.1f} | {f_add:.0f} | "
                    f"{packed['load_peak_mib'] - packed['base_mib']:.0f} | {p_add:.0f} | "
                    f"{goal:.0f} | {'met' if p_add <= goal else 'missed'} |")
        print(rows[-1], flush=True)
    return rows


MEMORY_HEADER = [
    "| network (bnn) | batch | file MiB | float params MiB | float network: added peak MiB | "
    "packed: added peak MiB, load | packed: added peak MiB, load + forward | goal: 2 x file "
    "+ activations, MiB | goal |",
    "|---|---|---|---|---|---|---|---|---|",
]


def profile_table(fn: Callable[[], object], top: int = 12) -> str:
    """The ``top`` CUDA kernels of a few calls of ``fn`` by total GPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top,
                                     max_name_column_width=60)


def _eager_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    return float(do_bench(fn, warmup=10, rep=100, return_mode="median"))


def gpu_lines(workdir: Path, on_row: Callable[[list[str], str, list[str]], None] | None = None
              ) -> tuple[list[str], str, list[str]]:
    """GPU table rows (measured on CUDA, else pending), the device description, profiles.

    ``on_row(rows, device, profiles)`` runs after every row, so a run cut short by a time
    limit still leaves every row it measured in the report.
    """
    if not torch.cuda.is_available():
        rows = [f"| {label} | {b} | - | - | - | - | - | - | - | - | {PENDING} |"
                for label, _, batches in GPU_CASES for b in batches]
        return rows, "none: " + PENDING, []
    from bnnbench.bench.kernels import _gpu_time_ms, gpu_versions

    dev = torch.device("cuda")
    v = gpu_versions()
    name = (f"{torch.cuda.get_device_name(dev)}, driver {v['driver']}, CUDA {v['CUDA (torch)']}, "
            f"torch {v['torch']}, triton {v['triton']}")
    rows, profiles = [], []
    for label, overrides, batches in GPU_CASES:
        try:
            for r in measure_device(overrides, batches, workdir, dev, torch.float16, IMAGENET,
                                    _gpu_time_ms, _eager_ms, profile_batch=1):
                rows.append(f"| {label} | {r['batch']} | {r['fp_ms']:.3f} | "
                            f"{r['packed_ms']:.3f} | {r['fp_ms'] / r['packed_ms']:.2f}x | "
                            f"{r['unfused_ms']:.3f} ({r['fused_pairs']} pairs fused"
                            f"{'' if r['fused_same'] else ', outputs differ!'}) | "
                            f"{r['fp_eager_ms']:.3f} | {r['packed_eager_ms']:.3f} | "
                            f"{r['graphed_ms']:.3f}"
                            f"{'' if r['graphed_same'] else ' (classes differ!)'} | "
                            f"{r['agree']:.1f}% | "
                            f"{goal_verdict(r['batch'], r['fp_ms'] / r['packed_ms'])} |")
                print(rows[-1], flush=True)
                if "profile" in r:
                    profiles += [f"### {label}, batch {r['batch']}, packed (fp16)", "",
                                 "```", r["profile"], "```", ""]
                if on_row is not None:
                    on_row(rows, name, profiles)
        except Exception as e:  # noqa: BLE001 - record the failure in the report, keep going
            rows.append(f"| {label} | - | - | - | - | - | - | - | - | - | failed: "
                        f"{type(e).__name__}: {str(e)[:150]} |")
            print(rows[-1], flush=True)
    return rows, name, profiles


#: the issue's end-to-end goals: speedup of the packed model over the fp16 network, by batch
E2E_GOALS = {1: 2.0, 256: 1.3}


def goal_verdict(batch: int, speedup: float) -> str:
    goal = E2E_GOALS.get(batch)
    if goal is None:
        return "measured"
    return f"goal >= {goal:g}x: {'met' if speedup >= goal else 'missed'}"


GPU_NOTES = [
    "- Networks: BinaryNet ResNet-18 and NIN at ImageNet geometry (3x224x224, 1000 classes), "
    "random inputs; *fp16 network*: the same architecture with no method, in fp16; *packed*: "
    "`load_packed(..., device='cuda')` in fp16 (binary layers on the Triton kernels). *graph*: "
    "median of `triton.testing.do_bench_cudagraph` (the forward replayed as one CUDA graph: "
    "what `torch.compile(mode='reduce-overhead')` or a captured graph gives); *eager*: median of "
    "`triton.testing.do_bench` on plain calls (Python and launch overhead included); "
    "*cuda_graph=True*: plain calls of `load_packed(..., cuda_graph=True)` (one graph captured "
    "per input shape, then input copy + replay + output copy per call; the classes are checked "
    "equal to the eager packed model's). Goals: "
    ">= 2x the fp16 network at batch 1, >= 1.3x at batch 256 (graph times). *agreement*: share "
    "of inputs where the packed model's class equals the trained BinaryNet module's (fp32). "
    "*packed*: BatchNorm -> sign between two binary layers folded into the first one's kernel "
    "(`load_packed`'s default `fuse=True`, bnnbench.packed.fusion); *unfused*: "
    "`load_packed(..., fuse=False)` (float output, BatchNorm, htanh, pack kernel per pair), "
    "graph time, its logits checked equal to the fused model's.",
    "",
    "| network | batch | fp16 network ms (graph) | packed ms (graph) | speedup (graph) | "
    "packed unfused ms (graph) | "
    "fp16 network ms (eager) | packed ms (eager) | packed ms (cuda_graph=True) | agreement | "
    "goal |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def write_gpu_report(out: Path) -> None:
    """GPU rows only (``--gpu-only``): their own file, measured on a GPU machine; rewritten
    after every row."""
    with tempfile.TemporaryDirectory() as tmp:
        final = gpu_lines(Path(tmp), on_row=lambda *a: _write(out, _gpu_report_text(*a)))
    _write(out, _gpu_report_text(*final))


def _gpu_report_text(g_rows: list[str], gpu_name: str, profiles: list[str]) -> list[str]:
    return [
        "# Packed inference vs the float model: GPU",
        "",
        "Written by `python -m bnnbench.bench.packed_inference --gpu-only` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; do not edit by hand, rerun it on "
        "a GPU machine. CPU rows: `packed_inference.md`.",
        "",
        f"- Device: {gpu_name}.",
        *GPU_NOTES,
        *g_rows,
        "",
        "## Where the packed forward spends its GPU time (batch 1, torch.profiler, 5 calls)",
        "",
        *profiles,
    ]


def _write(out: Path, text: list[str]) -> None:
    write_atomic(out, "\n".join(text))
    print("wrote", out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None,
                        help="report path (default reports/packed_inference.md, with --gpu-only "
                             "reports/packed_inference_gpu.md)")
    parser.add_argument("--lce-python", default=None,
                        help="python of an environment with Larq Compute Engine 0.16 "
                             "(README, 'Against the Larq Compute Engine'; default "
                             f"${lce.ENV_VAR}): adds the LCE comparison, else one line says it "
                             "was skipped")
    parser.add_argument("--gpu-only", action="store_true",
                        help="GPU rows only, into their own report (needs CUDA)")
    args = parser.parse_args(argv)
    if args.gpu_only:
        if not torch.cuda.is_available():
            raise SystemExit("bnnbench.bench.packed_inference: --gpu-only needs a CUDA GPU; run "
                             "without it here")
        write_gpu_report(args.out or ROOT / "reports" / "packed_inference_gpu.md")
        return
    out = args.out or ROOT / "reports" / "packed_inference.md"
    lines = [
        "| network | method | batch | fp32 network ms | as trained ms | packed ms | "
        "speedup vs fp32 | top-1 agreement with trained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, overrides, batches, geometry in CASES:
            for batch, fp_ms, trained_ms, packed_ms, agree in measure(
                    overrides, batches, args.repeats, Path(tmp), geometry, method):
                lines.append(f"| {label} | {method} | {batch} | {fp_ms:.3f} | {trained_ms:.3f} | "
                             f"{packed_ms:.3f} | {fp_ms / packed_ms:.2f}x | "
                             f"{agree:.1f}% |")
                print(lines[-1], flush=True)
        lce_lines = lce.section(args.lce_python, args.repeats, Path(tmp))
        print(*lce_lines, sep="\n", flush=True)
        g_rows, gpu_name, profiles = gpu_lines(Path(tmp))
        m_rows = memory_rows(Path(tmp))
    text = [
        "# Packed inference vs the float model",
        "",
        f"Written by `python -m bnnbench.bench.packed_inference` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; do not edit by hand, rerun it.",
        "",
        "## CPU",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average before the runs: "
        f"{os.getloadavg()[0]:.2f}.",
        "- Networks: BinaryNet (`bnn`: first and last layers float32, every other layer "
        "sign weights and sign inputs), XNOR-Net (`xnor`: per-filter alpha, activation scale K) "
        "and Tang et al. (`tang`: 2 residual activation planes, one `multibit_xnor_gemm` per "
        "layer) on the embedded MNIST geometry (1x28x28, 10 classes) or ImageNet's (3x224x224, "
        "1000 classes; the GPU rows' networks), random inputs, exported with "
        "`bnnbench.packed.format.save_packed` and loaded with `load_packed` (binary layers on "
        "`bnnbench.kernels`' CPU path, routes in `bnnbench.packed.routes.kernel_route`). "
        f"Median of {args.repeats} forwards after a warm-up, eval mode. *fp32 network*: the same "
        "architecture with no method (the float model a user would otherwise deploy); *as "
        "trained*: the Lightning-trained module, which re-binarizes its latent float weights "
        "every forward. Weights are untrained (speed does not depend on them); BatchNorm "
        "statistics are randomized as after training (`trained_like_batchnorm`: at init a binary "
        "dot product of exactly 0 sits on the next sign()'s threshold, where the packed model's "
        "exact 0 and the float forward's rounding noise disagree). *agreement*: the share of "
        "inputs whose packed class equals the trained module's; BinaryNet's packed layers are "
        "integer-exact, the scaled routes (XNOR-Net's alpha and K, Tang's plane alphas) equal "
        "the float forward to rounding; on trained models' test sets the tests require 100% for "
        "every method (`tests/test_export.py`).",
        "",
        *lines,
        "",
        "## LCE comparison (CPU)",
        "",
        "bnnbench's packed BinaryNet MLP and its binary layer alone against the Larq Compute "
        "Engine's interpreter on the same network, weights and inputs "
        "(`bnnbench.bench.lce`; `--lce-python`).",
        "",
        *lce_lines,
        "",
        "## Memory (CPU)",
        "",
        "Peak resident memory a fresh process adds to load a model and run one forward (Linux "
        "`VmHWM`, reset after the imports, a warm-up of the packed kernels and a storage-less "
        "build of the network on the meta device; `python -m bnnbench.bench.peak_memory`), "
        "packed export vs the float network of the same architecture; the packed figure is "
        "the second of two fresh processes (numba's on-disk kernel cache warm, as in a "
        "deployment). `load_packed` builds the network on the meta device and assigns the file's "
        "tensors, read into memory; every binary layer here has a fan-in that is a multiple of 32, "
        "so its stored bits are the kernels' weight words, used in place. Goal: the "
        "packed model adds at most twice its file size plus its activations (the float "
        "network's added peak minus its parameter bytes).",
        "",
        *MEMORY_HEADER,
        *m_rows,
        "",
        "## GPU",
        "",
        f"- Device: {gpu_name}; rows measured on a GPU machine are in `packed_inference_gpu.md` "
        "(`--gpu-only`).",
        *GPU_NOTES,
        *g_rows,
        "",
        *profiles,
    ]
    _write(out, text)


if __name__ == "__main__":
    main()
