"""End-to-end packed inference vs the float model: ``python -m bnnbench.bench.packed_inference``.

Builds BinaryNet (``+method=bnn``) networks from the shipped configs, exports them with
:func:`bnnbench.export.save_packed`, loads the packed inference model
(:func:`bnnbench.export.load_packed`, whose sign-weight/sign-input layers run on
``bnnbench.kernels``) and times one forward of each against the float model the export came from
(eval mode, same inputs), after checking that both predict the same classes. Writes
``reports/packed_inference.md``. Speed does not depend on the trained values, so the networks
keep their initial weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bnnbench.bench import cpu_model
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from bnnbench import CONFIG_DIR
from bnnbench.export import build_net, load_packed, save_packed

ROOT = Path(__file__).resolve().parents[2]
GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 28}  # the embedded MNIST digits
CASES = (  # (label, overrides, batch sizes)
    ("mlp 3x1024 (config default)", ["model=mlp", "model.hidden_features=1024"], (1, 256)),
    ("mlp 3x4096 (BinaryNet paper)", ["model=mlp", "model.hidden_features=4096"], (1, 256)),
    ("resnet18 (28 px stem)", ["model=resnet18"], (1, 32)),
)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def composed(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


@torch.inference_mode()
def measure(overrides: list[str], batches: tuple[int, ...], repeats: int,
            workdir: Path) -> list[tuple[int, float, float, float, bool]]:
    """Per batch: (batch, fp32 reference ms, BinaryNet training-graph ms, packed ms, same)."""
    reference = build_net(composed(overrides), GEOMETRY).eval()  # no method: float32 network
    cfg = composed(["+method=bnn", *overrides])
    net = build_net(cfg, GEOMETRY).eval()
    path = save_packed(net, workdir / f"{abs(hash(tuple(overrides)))}.safetensors", cfg, GEOMETRY)
    packed = load_packed(path)
    rows = []
    for batch in batches:
        x = torch.randn(batch, GEOMETRY["in_chans"], GEOMETRY["img_size"], GEOMETRY["img_size"])
        same = bool(torch.equal(net(x).argmax(-1), packed(x).argmax(-1)))
        rows.append((batch, median_ms(lambda: reference(x), repeats),
                     median_ms(lambda: net(x), repeats), median_ms(lambda: packed(x), repeats),
                     same))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "packed_inference.md")
    args = parser.parse_args(argv)
    lines = [
        "| network | batch | fp32 network ms | BinaryNet as trained ms | packed ms | "
        "speedup vs fp32 | same predictions as trained |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides, batches in CASES:
            for batch, fp_ms, trained_ms, packed_ms, same in measure(overrides, batches,
                                                                     args.repeats, Path(tmp)):
                lines.append(f"| {label} | {batch} | {fp_ms:.3f} | {trained_ms:.3f} | "
                             f"{packed_ms:.3f} | {fp_ms / packed_ms:.2f}x | "
                             f"{'yes' if same else 'NO'} |")
                print(lines[-1], flush=True)
    text = [
        "# Packed inference vs the float model (CPU)",
        "",
        f"Written by `python -m bnnbench.bench.packed_inference` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; do not edit by hand, rerun it.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average before the runs: "
        f"{os.getloadavg()[0]:.2f}.",
        "- Networks: BinaryNet (`+method=bnn`: first and last layers float32, every other layer "
        "sign weights and sign inputs) on the embedded MNIST geometry (1x28x28, 10 classes), "
        "exported with `bnnbench.export.save_packed` and loaded with `load_packed` (binary layers "
        "on `bnnbench.kernels`' CPU path). Median of "
        f"{args.repeats} forwards after a warm-up, eval mode. *fp32 network*: the same "
        "architecture with no method (the float model a user would otherwise deploy); *BinaryNet "
        "as trained*: the Lightning-trained module, which re-binarizes its latent float weights "
        "every forward; the packed model must predict exactly what it predicts.",
        "- GPU rows (packed ResNet-18 / NIN vs the fp16 model at batch 1 and 256): pending, no GPU "
        "in the session that wrote this file.",
        "",
        *lines,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
