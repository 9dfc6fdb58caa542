"""What each method costs to train: ``python -m bnnbench.bench.training_cost``.

Times one Lightning training step (forward, loss, backward, optimizer step and the method's
hooks: exactly what ``python -m bnnbench`` runs per batch) of every method on ResNet-18, at
CIFAR geometry (3x32x32, 10 classes) and ImageNet geometry (3x224x224, 1000 classes), with
``precision="bf16-mixed"`` on a GPU, and writes images/s and the ratio to the full-precision
network into ``reports/training_cost.md``: the price a researcher pays for each method's
binarization (latent weights, straight-through estimators, M x N bases, residual planes).

Batches are synthetic and already on the device (data loading is not what is measured here:
``bnnbench.bench.dataloading`` measures the loaders). Each case runs ``--warmup`` steps, then
``--steps`` timed steps; the median step time is reported (CUDA synchronised around each step).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from bnnbench.bench import cpu_model
from bnnbench.files import write_atomic
from bnnbench.record import git_commit

ROOT = Path(__file__).resolve().parents[2]

#: (label, overrides) per method: the issue's list; abcnet and tang at the stated M, N, m.
METHODS: tuple[tuple[str, list[str]], ...] = (
    ("fp", []),
    ("bnn", ["+method=bnn"]),
    ("xnor", ["+method=xnor"]),
    ("dorefa", ["+method=dorefa"]),
    ("abcnet M=N=3", ["+method=abcnet", "method.weight_bases=3", "method.activation_bases=3"]),
    ("tang m=2", ["+method=tang", "method.activation_bits=2"]),
)
#: (label, geometry, batch size)
GEOMETRIES: dict[str, tuple[tuple[str, dict[str, int], int], ...]] = {
    "full": (("CIFAR 3x32x32, 10 classes", {"in_chans": 3, "num_classes": 10, "img_size": 32},
              256),
             ("ImageNet 3x224x224, 1000 classes",
              {"in_chans": 3, "num_classes": 1000, "img_size": 224}, 128)),
    "tiny": (("tiny 3x16x16, 4 classes", {"in_chans": 3, "num_classes": 4, "img_size": 16}, 4),),
}


class StepTimer(pl.Callback):
    """Wall time of every training step, the device synchronised before and after."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync(module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def build_module(overrides: list[str], geometry: dict[str, int]):
    """The BNNModule ``python -m bnnbench <overrides> model=resnet18`` trains, for ``geometry``."""
    from hydra.utils import instantiate

    from bnnbench.bench.packed_inference import composed
    from bnnbench.lit import BNNModule
    from bnnbench.spec import build_method, build_model, spec_from_config

    cfg = composed([*overrides, "model=resnet18"])
    spec = spec_from_config(cfg)  # built as `python -m bnnbench` builds it: through the registries
    method = build_method(spec)
    net = method.convert(build_model(spec, geometry))
    return BNNModule(net, method, optimizer=instantiate(cfg.optimizer), scheduler=None)


def time_training(overrides: list[str], geometry: dict[str, int], batch: int,
                  device: torch.device, precision: str, warmup: int, steps: int
                  ) -> dict[str, float]:
    """Median training-step time (s), images/s and peak device memory (GiB) of one case."""
    pl.seed_everything(0, verbose=False)
    module = build_module(overrides, geometry)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, geometry["in_chans"], geometry["img_size"], geometry["img_size"],
                    generator=g).to(device)
    y = torch.randint(0, geometry["num_classes"], (batch,), generator=g).to(device)
    loader = DataLoader([(x, y)] * (warmup + steps), batch_size=None)
    timer = StepTimer()
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         precision=precision, max_steps=warmup + steps, max_epochs=1,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, train_dataloaders=loader)
    step = statistics.median(timer.times[warmup:])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"step_s": step, "images_per_s": batch / step, "peak_gib": peak}


def device_description(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
    from bnnbench.bench.kernels import gpu_versions

    v = gpu_versions()
    return (f"{torch.cuda.get_device_name(device)}, driver {v['driver']}, CUDA "
            f"{v['CUDA (torch)']}, torch {v['torch']}, triton {v['triton']}, "
            f"pytorch-lightning {pl.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "training_cost.md")
    parser.add_argument("--plan", choices=sorted(GEOMETRIES), default="full")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default=None,
                        help="Lightning precision (default bf16-mixed on CUDA, 32-true on CPU)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated labels to run (default: all of METHODS)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    wanted = None if args.methods is None else set(args.methods.split(","))
    rows = []
    for geo_label, geometry, batch in GEOMETRIES[args.plan]:
        fp_rate = None
        for label, overrides in METHODS:
            if wanted is not None and label not in wanted and label != "fp":
                continue
            try:
                r = time_training(overrides, geometry, batch, device, precision, args.warmup,
                                  args.steps)
            except Exception as e:  # noqa: BLE001 - one failing method is a row, not a stop
                rows.append(f"| {geo_label} | {label} | {batch} | - | - | - | - | failed: "
                            f"{type(e).__name__}: {str(e)[:150]} |")
                print(rows[-1], flush=True)
                continue
            if label == "fp":
                fp_rate = r["images_per_s"]
            ratio = f"{r['images_per_s'] / fp_rate:.2f}" if fp_rate else "-"
            rows.append(f"| {geo_label} | {label} | {batch} | {r['step_s'] * 1e3:.1f} | "
                        f"{r['images_per_s']:.0f} | {ratio} | {r['peak_gib']:.2f} | measured |")
            print(rows[-1], flush=True)
    text = [
        "# Training cost per method",
        "",
        f"Written by `python -m bnnbench.bench.training_cost"
        f"{'' if args.plan == 'full' else ' --plan ' + args.plan}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; do not edit by hand, rerun it.",
        "",
        f"- Device: {device_description(device)}; Lightning precision `{precision}`; "
        f"bnnbench commit {git_commit()}.",
        "- One Lightning training step of ResNet-18 (`model=resnet18`, each method's shipped "
        "config and optimizer) on a synthetic batch already on the device: forward, loss, "
        f"backward, optimizer step, method hooks. Median of {args.steps} steps after "
        f"{args.warmup} warm-up steps. *vs fp*: images/s as a fraction of the full-precision "
        "network's at the same geometry (1.00 = as fast as fp; 0.25 = four times the training "
        "time). *peak*: `torch.cuda.max_memory_allocated` during the run.",
        "",
        "| geometry | method | batch | step ms | images/s | vs fp | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    write_atomic(args.out, "\n".join(text))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
