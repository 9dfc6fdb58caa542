"""Benchmarks that write their own report files (``python -m bnnbench.bench.<name>``)."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

#: the embedded MNIST digits' geometry (1x28x28, 10 classes): the CPU benches' input
GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 28}
#: BinaryNet's MNIST MLP at the paper's width, 784-4096x3-10 (with ``+method=bnn``)
MLP_4096 = ["model=mlp", "model.hidden_features=4096"]


def composed(overrides: list[str]):
    """The run config ``conf/config.yaml`` composes with ``overrides`` (Hydra ``key=value``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bnnbench import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def trained_like_batchnorm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm random running statistics, as a trained network has.

    At initialisation (mean 0) a binary dot product of exactly 0 lands on the next sign()'s
    threshold: the packed model computes it as exactly 0 (sign +1), the float forward as
    float noise of either sign, so the two disagree there by rounding alone. Trained
    statistics move the tie off the threshold. Speed is unaffected.
    """
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net
