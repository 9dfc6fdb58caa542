"""Every GPU measurement of bnnbench in one short run: ``python -m bnnbench.bench.gpu --out DIR``.

Made for a bare GPU machine lent for a few minutes (no network): install the carried wheels
first (README, "Measuring on a GPU"), then run this from the repository root. Steps, in order,
each in its own process with its own time limit, each skippable (``--skip kernels,tests``),
each logging into ``DIR/<step>.log``:

1. ``versions``: nvidia-smi, python and library versions;
2. ``kernels``: ``python -m bnnbench.bench.kernels --gpu-only --plan gpu_short`` (both-binary
   and binary-weight GEMVs at N = K = 4096..16384, M = 1/4/16 (binary weights also with the
   old lanes GEMV layout, M <= 4), the small-N split-K GEMV rows, gemlite's A16W1 on the same
   shapes in the same process (a row saying why when gemlite is not importable), the fused
   BatchNorm -> sign pairs against the unfused ones (two 4096 linear layers at M = 1 and 256,
   ResNet-18 3x3 convs at 64 x 56 px batch 1 and 256 x 14 px batch 8; bits and outputs
   checked equal), the GEMM rows; every row checked against float64 on the same inputs);
3. ``tests``: ``pytest tests/kernels/test_configs.py tests/test_cuda_graph.py`` on CUDA (every
   kept config of every GEMV/GEMM kernel, split-K included, against float64; a real CUDA-graph
   capture). The whole kernel suite (``pytest tests/kernels``, about 200 s) does not fit
   beside the rest: run it as a second call;
4. ``packed``: ``python -m bnnbench.bench.packed_inference --gpu-only`` (packed ResNet-18 / NIN
   vs the fp16 network, CUDA graphs, eager and ``load_packed(..., cuda_graph=True)``, the
   unfused packed model ``load_packed(..., fuse=False)`` beside the fused default, profiler
   table at batch 1);
5. ``training``: ``python -m bnnbench.bench.training_cost`` (one Lightning step per method,
   bf16-mixed; last, since ``reports/training_cost.md`` already holds an H200 run).

The step limits add up to more than the default ``--budget`` of 460 s: every step gets at most
what is left, so the whole script ends inside 8 minutes and the last steps are the ones cut.

The reports land in ``DIR`` (``kernels_gpu.md``, ``packed_inference_gpu.md``,
``training_cost.md``); ``DIR/gpu_results.tar.gz`` is rewritten after every step, so a run cut
short still returns what it finished. Copy the reports into ``reports/`` afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

#: steps that run without a GPU (the rest are skipped, with the reason, where CUDA is missing)
CPU_STEPS = ("versions",)

#: (name, command (``{work}`` = the step folder), time limit s)
STEPS: tuple[tuple[str, list[str], int], ...] = (
    ("versions", [sys.executable, "-c",
                  "import shutil, subprocess, torch, triton, pytorch_lightning as pl\n"
                  "if shutil.which('nvidia-smi'):\n"
                  "    print(subprocess.run(['nvidia-smi'], capture_output=True, "
                  "text=True).stdout)\n"
                  "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', "
                  "triton.__version__, 'lightning', pl.__version__)\n"
                  "if torch.cuda.is_available():\n"
                  "    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))\n"
                  "else:\n"
                  "    print('no CUDA GPU visible to torch')\n"
                  "for name in ('hydra', 'omegaconf', 'gemlite', 'timm', 'numba'):\n"
                  "    try:\n"
                  "        m = __import__(name); print(name, getattr(m, '__version__', '?'))\n"
                  "    except Exception as e:\n"
                  "        print(name, 'missing:', e)\n"], 60),
    ("kernels", [sys.executable, "-m", "bnnbench.bench.kernels", "--gpu-only", "--plan",
                 "gpu_short", "--out", "{work}/kernels_gpu.md"], 200),
    ("tests", [sys.executable, "-m", "pytest", "tests/kernels/test_configs.py",
               "tests/test_cuda_graph.py", "-q", "--maxfail=20", "-p", "no:cacheprovider",
               "--durations=10"], 120),
    ("packed", [sys.executable, "-m", "bnnbench.bench.packed_inference", "--gpu-only",
                "--out", "{work}/packed_inference_gpu.md"], 120),
    ("training", [sys.executable, "-m", "bnnbench.bench.training_cost",
                  "--out", "{work}/training_cost.md"], 120),
)


def run_step(name: str, cmd: list[str], limit: float, work: Path) -> str:
    """Run one step with a time limit; its output goes to ``work/<name>.log``. A status line."""
    log = work / f"{name}.log"
    start = time.monotonic()
    with log.open("w") as fh:
        try:
            rc = subprocess.run([c.replace("{work}", str(work)) for c in cmd], stdout=fh,
                                stderr=subprocess.STDOUT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    line = f"{name}: {status} in {time.monotonic() - start:.0f} s"
    print(line, flush=True)
    print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:]), flush=True)
    return line


def bundle(work: Path, out: Path) -> None:
    """Tar the step folder into ``out/gpu_results.tar.gz`` (atomically replaced)."""
    from bnnbench.files import atomic_path

    with atomic_path(out / "gpu_results.tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname="gpu_results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for logs and reports")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip")
    parser.add_argument("--only", default="", help="comma-separated steps to run (default all)")
    parser.add_argument("--budget", type=float, default=460,
                        help="total seconds; a step gets at most what is left")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/bnnbench_gpu_results")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    deadline = time.monotonic() + args.budget
    summary = []
    import torch

    gpu = torch.cuda.is_available()
    for name, cmd, limit in STEPS:
        if name in skip or (only and name not in only):
            summary.append(f"{name}: skipped")
            continue
        if not gpu and name not in CPU_STEPS:
            summary.append(f"{name}: skipped (no CUDA GPU here)")
            print(summary[-1], flush=True)
            continue
        left = deadline - time.monotonic()
        if left < 15:
            summary.append(f"{name}: not run (budget spent)")
            continue
        summary.append(run_step(name, cmd, min(limit, left), work))
        (work / "summary.txt").write_text("\n".join(summary) + "\n")
        bundle(work, args.out)
    (work / "summary.txt").write_text("\n".join(summary) + "\n")
    bundle(work, args.out)
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
