"""The report's plots (matplotlib, Agg, PNG): accuracy vs deployed size with the Pareto front,
training curves per setting with seeds as thin lines, and Tang et al. (2017)'s Figure 2 (the
share of latent weights whose sign flips, per binary layer, per epoch) when the runs recorded it
(``curves["flip_ratio/<layer>"]`` in metrics.json).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bnnbench.files import atomic_path  # noqa: E402
from bnnbench.report.flips import FLIP_PREFIX, layer_order  # noqa: E402

if TYPE_CHECKING:
    from bnnbench.report.render import Report

def pareto_front(sizes: list[float], accuracies: list[float]) -> list[int]:
    """Indices of the points no other point beats: none is at most as large and at least as
    accurate with one of the two strictly. Returned from the smallest size up."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -accuracies[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        # no date, no version in the file: rerendering the same runs gives the same bytes
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight",
                    metadata={"Software": None})
    plt.close(fig)


def _label(setting: str) -> str:
    """'method=bnn' -> 'bnn' (a method's name says what it is); anything else stays whole:
    'method.activation_bits=1' alone as '1' would not say which knob the legend means."""
    key, _, value = setting.partition("=")
    return value if key in ("method", "+method") and " " not in setting else setting


def _palette(report: Report) -> dict[str, tuple[float, ...]]:
    """One colour per setting, in the report's row order, shared by every plot of a report (a
    method is the same colour in the size plot, the curves and the flip ratios)."""
    settings = list(dict.fromkeys(report.long["setting"].tolist()))
    cmap = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(settings)}


def accuracy_vs_size(report: Report, path: Path) -> bool:
    done = report.long[(report.long["status"] == "finished") & report.long["test_top1"].notna()
                       & report.long["size_bytes"].notna()]
    if done.empty:
        return False
    stats = done.groupby("setting", sort=False).agg(
        size=("size_bytes", "mean"), top1=("test_top1", "mean"), std=("test_top1", "std"),
        n=("test_top1", "count"))
    sizes = (stats["size"] / 2**20).tolist()
    top1 = stats["top1"].tolist()
    std = stats["std"].fillna(0.0).tolist()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    palette = _palette(report)
    for (setting, row), size in zip(stats.iterrows(), sizes):
        color = palette[setting]
        ax.errorbar(size, row.top1, yerr=0.0 if math.isnan(row["std"]) else row["std"],
                    fmt="o", color=color, capsize=3, label=f"{_label(setting)} (n={int(row.n)})")
    front = pareto_front(sizes, top1)
    ax.plot([sizes[i] for i in front], [top1[i] for i in front], "--", color="0.3", lw=1,
            zorder=0, label="Pareto front")
    ax.scatter([sizes[i] for i in front], [top1[i] for i in front], s=160, facecolors="none",
               edgecolors="0.3", zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(min(sizes) / 1.3, max(sizes) * 1.3)
    if max(sizes) / min(sizes) < 10:  # inside one decade: tick the sizes themselves
        ticks = sorted({float(f"{s:.3g}") for s in sizes})
        ticks = [t for i, t in enumerate(ticks) if i == 0 or t / ticks[i - 1] > 1.04]
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("deployed model size (MiB, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{report.name}: accuracy vs deployed size (mean ± std over seeds)")
    low = min(t - s for t, s in zip(top1, std))
    high = max(t + s for t, s in zip(top1, std))
    pad = max(1.0, 0.1 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def _by_setting(report: Report) -> dict[str, list[dict[str, list[float]]]]:
    grouped: dict[str, list[dict[str, list[float]]]] = defaultdict(list)
    for setting, _seed, curves in report.curves:
        grouped[setting].append(curves)
    return grouped


def _seed_lines(ax: plt.Axes, runs: list[list[float]], color: tuple[float, ...],
                label: str, style: str = "-") -> None:
    """Each seed thin, their mean (over the epochs all seeds reached) thick."""
    for values in runs:
        ax.plot(range(1, len(values) + 1), values, color=color, lw=0.7, alpha=0.55, ls=style,
                marker="." if len(values) < 3 else None)
    common = min(len(v) for v in runs)
    if common:
        mean = np.nanmean(np.array([v[:common] for v in runs], dtype=float), axis=0)
        ax.plot(range(1, common + 1), mean, color=color, lw=2.0, ls=style, label=label,
                marker="o" if common < 3 else None)


def _epoch_axis(ax: plt.Axes, epochs: int) -> None:
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, epochs + 0.5)
    if epochs <= 10:  # every epoch ticked (MaxNLocator puts 0.6, 1.2 on a one-epoch axis)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(list(range(1, epochs + 1))))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=10))


def _max_epochs(report: Report) -> int:
    return max((len(v) for _s, _seed, c in report.curves for v in c.values()), default=1) or 1


def training_curves(report: Report, path: Path) -> bool:
    grouped = _by_setting(report)
    if not any(c.get("train/loss") for runs in grouped.values() for c in runs):
        return False
    # runs with a teacher: a third panel, the distillation term (solid) and the method's loss
    # (dashed) that train/loss weighs together (bnnbench.lit.BNNModule)
    distilled = any(c.get("train/kd") for runs in grouped.values() for c in runs)
    fig, axes = plt.subplots(1, 3 if distilled else 2, figsize=(16.5 if distilled else 11, 4.2))
    palette = _palette(report)
    for setting in sorted(grouped, key=list(palette).index):  # the legend in the table's order
        runs, color = grouped[setting], palette[setting]
        for ax, key in zip(axes, ("train/loss", "val/top1")):
            series = [c[key] for c in runs if c.get(key)]
            if series:
                _seed_lines(ax, series, color, _label(setting))
        for key, style in (("train/kd", "-"), ("train/task", "--")) if distilled else ():
            series = [c[key] for c in runs if c.get(key)]
            if series:
                _seed_lines(axes[2], series, color, f"{_label(setting)} {key}", style)
    axes[0].set_ylabel("train loss (epoch mean)")
    axes[1].set_ylabel("validation top-1 (%)")
    if distilled:
        axes[2].set_ylabel("KD term (solid), method loss (dashed)")
    for ax in axes:
        _epoch_axis(ax, _max_epochs(report))
        ax.grid(True, alpha=0.3)
    # beside the axes, as in the size plot: inside, a grid's 16 settings hid the curves; beside
    # the last panel (the KD panel's lines are the same settings, its y label says which term)
    handles, labels = axes[1].get_legend_handles_labels()
    axes[-1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{report.name}: training curves (thin: one seed, thick: mean)")
    _save(fig, path)
    return True


def _flip_styles(report: Report) -> dict[str, tuple[tuple[float, ...], str]]:
    """(colour, line style) per setting. A sweep of ``method`` x one other setting (Figure 2:
    method x learning rate) gets one colour per value of the other setting and one line style per
    method (solid for the first, dashed for the next, ...), so "BNN vs full precision at each lr"
    reads at a glance; any other sweep keeps its report colours, solid."""
    palette = _palette(report)
    if len(report.keys) != 2 or "method" not in report.keys:
        return {s: (c, "-") for s, c in palette.items()}
    other = report.keys[1 - report.keys.index("method")]
    settings = list(palette)
    values = list(dict.fromkeys(report.long[other].astype(str)))
    methods = list(dict.fromkeys(report.long["method"].astype(str)))
    cmap = plt.get_cmap("tab10")
    styles = ("-", "--", ":", "-.")
    out = {}
    for setting in settings:
        parts = dict(p.partition("=")[::2] for p in setting.split(" "))
        colour = cmap(values.index(parts[other]) % cmap.N) if parts.get(other) in values \
            else palette[setting]
        method = parts.get("method")
        style = styles[methods.index(method) % len(styles)] if method in methods else "-"
        out[setting] = (colour, style)
    return out


def _decades(ax: plt.Axes) -> float:
    """How many orders of magnitude a log axis spans (under one: label the minor ticks too)."""
    low, high = ax.get_ylim()
    return math.log10(high / low) if low > 0 and high > 0 else math.inf


def flip_ratio(report: Report, path: Path) -> bool:
    """Tang et al. 2017 Figure 2 per epoch: one panel per weight layer (network order), the
    percent of its latent weights whose sign flips per step, log axis as the paper's."""
    grouped = _by_setting(report)
    layers = layer_order(k[len(FLIP_PREFIX):] for runs in grouped.values() for c in runs
                         for k in c if k.startswith(FLIP_PREFIX))
    if not layers:
        return False
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False,
                             sharex=True, sharey=True)
    styles = _flip_styles(report)
    for ax, layer in zip(axes.flat, layers):
        for setting, runs in grouped.items():
            colour, style = styles[setting]
            series = [[math.nan if v is None else 100 * v for v in c[FLIP_PREFIX + layer]]
                      for c in runs if c.get(FLIP_PREFIX + layer)]
            if series:
                _seed_lines(ax, series, colour, _label(setting), style)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_yscale("log", nonpositive="mask")  # an epoch without a flip is left out
        ax.grid(True, which="both", alpha=0.3)
        _epoch_axis(ax, _max_epochs(report))
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    plain = matplotlib.ticker.FuncFormatter(lambda value, _pos: f"{value:g}")  # 0.01, not 10^-2
    for ax in axes.flat:  # one y axis (shared): label the minor ticks when it spans < 1 decade
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if _decades(ax) < 1 else
                                     matplotlib.ticker.NullFormatter())
    for ax in axes[:, 0]:
        ax.set_ylabel("signs flipped per step (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(f"{report.name}: latent-weight sign flips per layer per epoch "
                 "(Tang et al. 2017, Fig. 2)")
    fig.tight_layout()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=min(3, len(labels)),
               bbox_to_anchor=(0.5, 0.0))
    _save(fig, path)
    return True


def write_plots(report: Report, out_dir: Path) -> dict[str, str]:
    """Write every plot the runs have data for; {kind: file name} of those written."""
    written = {}
    for kind, draw in (("size", accuracy_vs_size), ("curves", training_curves),
                       ("flip_ratio", flip_ratio)):
        name = f"{report.name}_{kind}.png"
        if draw(report, Path(out_dir) / name):
            written[kind] = name
    return written
